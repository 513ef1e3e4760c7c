"""Replica tombstones: what a node keeps of a group's replica after destroying it.

Rule: the hard state of a group on a node never goes back, across the replicas of that
group the node destroys and creates again. A replica's consensus identity is its node
id, so a replica of group G destroyed on node N (moved away by the zombie rule, or
merged away) and created on N again later (moved back: a snapshot; a lagging parent's
split) is, to G's other members, the same voter or acceptor as before, and its promises
must outlive the destroy. The transaction that destroys the state writes G's tombstone:
the highest term the replica had and its vote in that term (Multi-Paxos: the promised
ballot). Any later replica of G on N starts from it (``floor``: log.load_view for a
group's hard state, shard_apply's split for the group it creates), so it never votes
twice in a term and never promises below a ballot it promised (FINDINGS F12: "node 2
voted for 2 and then 4 in term 12"). The entries it acknowledged (accepted values) are
not kept, only how far its log went (below).

Why a tombstone rather than a new replica id per incarnation (etcd-io/raft never reuses
an id; TiKV gives each peer its own id): here a member is a node id everywhere
(ConfChange, descriptor voters and learners, transport, placement, client routing), so
a second id space would touch all of them, while the tombstone is one record the destroy
writes in its own transaction (TiKV keeps one as well, its Tombstone RegionLocalState).

Not refused: re-creating a destroyed replica from a snapshot of an older membership
(FINDINGS N3, a leader that has not applied the removal). With the hard state kept that
replica is safe (it catches up or is reaped again), and an epoch rule would also refuse
a leader that added the node back but streams an image it built before (GroupLog
reuses a built image until the log is compacted past it), stalling the move back.

A promise is not all a destroyed replica gave: it acknowledged log entries, which a
quorum counting it may have committed while no other member of that quorum is up. Its
tombstone also keeps how far its log went: the last index it stored and that entry's
term (``destroyed_log``). A replica of the group created here again takes that position
as a floor of its own log: it campaigns (NodeDriver.short_of_tombstone) and answers a vote
request (VOTE, PRE_VOTE, PREPARE: node/lifecycle.py may_vote) only once its log reaches
it; filled by an older image (a leader that has not applied the removal, N3, or reuses an
image built before it) it would grant a candidate lacking those entries, or be elected by
lagging voters, and that leader could overwrite committed entries.

Raft compares logs by their last (term, index) (``covers``): the vote is Raft's own rule
with the destroyed replica's log as the voter's, so a log of a later term counts as
reaching it whatever its length, and a candidate whose log reaches it is granted by the
core's usual check even while this replica's own log is short. Comparing indexes only
wedged a group: a tail of uncommitted entries the destroyed replica stored (a partitioned
leader's) and the group truncated is waited for until the group's log passes that index,
and with two such replicas of three no candidate could ever be elected to write it.
Multi-Paxos has no such order of logs (a promise reports the accepted values from the
candidate's index), so there the log must reach the index; records written before the
term was kept (term 0) keep that rule too.
Tombstones are never deleted: one record (18-byte key, 36-byte value) per group ever
destroyed on the node. A wiped data directory loses them with everything else (the
README's rule: a node that lost its data comes back as a new member).
"""

from __future__ import annotations

import struct
from typing import Any

from kvstore.consensus.types import NONE, HardState
from kvstore.storage import codec, keys
from kvstore.storage.errors import CorruptionError

_RECORD = struct.Struct("<QQQQ")  # term, vote, stored through, its entry's term
_RECORD_V2 = struct.Struct("<QQQ")  # term, vote, stored through (before its term was kept)
_RECORD_V1 = struct.Struct("<QQ")  # term, vote (written before stored through)


def floor(hs: HardState, t: HardState | None) -> HardState:
    """``hs`` never below the tombstone ``t``: its term at least ``t``'s, and in ``t``'s
    term ``t``'s vote (``hs``'s commit is kept)."""
    if t is None or hs.term > t.term:
        return hs
    if hs.term < t.term:
        return HardState(term=t.term, vote=t.vote, commit=hs.commit)
    return hs if hs.vote != NONE else HardState(term=hs.term, vote=t.vote, commit=hs.commit)


def _decode(txn: Any, dbs: Any, group: int) -> tuple[int, int, int, int] | None:
    record = txn.get(keys.tombstone_key(group), db=dbs.meta)
    if record is None:
        return None
    try:
        body = codec.unseal(group, record, "tombstone")
        if len(body) == _RECORD_V1.size:
            term, vote = _RECORD_V1.unpack(body)
            return term, vote, 0, 0
        if len(body) == _RECORD_V2.size:
            term, vote, through = _RECORD_V2.unpack(body)
            return term, vote, through, 0
        term, vote, through, through_term = _RECORD.unpack(body)
    except struct.error as e:
        raise CorruptionError(f"undecodable tombstone: {e}", group=group) from e
    return term, vote, through, through_term


def read(txn: Any, dbs: Any, group: int) -> HardState | None:
    """``group``'s tombstone (term and vote; commit 0) in ``txn``; None: none."""
    t = _decode(txn, dbs, group)
    return None if t is None else HardState(term=t[0], vote=t[1])


def destroyed_log(txn: Any, dbs: Any, group: int) -> tuple[int, int]:
    """(term, index) of the last entry a destroyed replica of ``group`` stored: (0, 0)
    none; term 0 with an index: a record from before the term was kept."""
    t = _decode(txn, dbs, group)
    return (0, 0) if t is None else (t[3], t[2])


def covers(last_term: int, last_index: int, mark: tuple[int, int], *, by_term: bool) -> bool:
    """Does a log ending at (``last_term``, ``last_index``) reach ``mark``, the destroyed
    replica's ``destroyed_log``? ``by_term``: Raft's order of logs (module doc), else (and
    for a mark without its term) the index alone."""
    mark_term, mark_index = mark
    if by_term and mark_term:
        return (last_term, last_index) >= (mark_term, mark_index)
    return last_index >= mark_index


def keep(
    txn: Any, dbs: Any, group: int, hs: HardState, last_index: int = 0, last_term: int = 0
) -> HardState:
    """Record (raise) ``group``'s tombstone in ``txn`` from the hard state and the last
    log entry (index, term) of a replica being destroyed; returns the hard state a
    replica created later starts from."""
    top = floor(hs, read(txn, dbs, group))
    old_term, old_index = destroyed_log(txn, dbs, group)
    if old_index and not old_term:  # an older record's index: it keeps the index rule
        through, through_term = max(old_index, last_index), 0
    else:  # the furthest of the two logs, in Raft's order (covers)
        through_term, through = max((old_term, old_index), (last_term, last_index))
    record = codec.seal(group, _RECORD.pack(top.term, top.vote, through, through_term))
    txn.put(keys.tombstone_key(group), record, db=dbs.meta)
    return HardState(term=top.term, vote=top.vote)
