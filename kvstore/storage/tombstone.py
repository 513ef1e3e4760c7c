"""Replica tombstones: what a node keeps of a group's replica after destroying it.

Rule: the hard state of a group on a node never goes back, across the replicas of that
group the node destroys and creates again. A replica's consensus identity is its node
id, so a replica of group G destroyed on node N (moved away by the zombie rule, or
merged away) and created on N again later (moved back: a snapshot; a lagging parent's
split) is, to G's other members, the same voter or acceptor as before, and its promises
must outlive the destroy. The transaction that destroys the state writes G's tombstone:
the highest term the replica had and its vote in that term (Multi-Paxos: the promised
ballot). Any later replica of G on N starts from it (``floor``: log.load_view for a
group's hard state, writer's split for the group it creates), so it never votes twice
in a term and never promises below a ballot it promised (FINDINGS F12: "node 2 voted for
2 and then 4 in term 12"). Accepted values need no tombstone: a re-created replica
learns the log again from a snapshot and the leader before it acknowledges anything
(Paxos: its ``lost_through`` rule).

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

Tombstones are never deleted: one record (18-byte key, 20-byte value) per group ever
destroyed on the node. A wiped data directory loses them with everything else (the
README's rule: a node that lost its data comes back as a new member).
"""

from __future__ import annotations

import struct
from typing import Any

from kvstore.consensus.types import NONE, HardState
from kvstore.storage import codec, keys
from kvstore.storage.errors import CorruptionError

_RECORD = struct.Struct("<QQ")  # term, vote


def floor(hs: HardState, t: HardState | None) -> HardState:
    """``hs`` never below the tombstone ``t``: its term at least ``t``'s, and in ``t``'s
    term ``t``'s vote (``hs``'s commit is kept)."""
    if t is None or hs.term > t.term:
        return hs
    if hs.term < t.term:
        return HardState(term=t.term, vote=t.vote, commit=hs.commit)
    return hs if hs.vote != NONE else HardState(term=hs.term, vote=t.vote, commit=hs.commit)


def read(txn: Any, dbs: Any, group: int) -> HardState | None:
    """``group``'s tombstone (term and vote; commit 0) in ``txn``; None: none."""
    record = txn.get(keys.tombstone_key(group), db=dbs.meta)
    if record is None:
        return None
    try:
        term, vote = _RECORD.unpack(codec.unseal(group, record, "tombstone"))
    except struct.error as e:
        raise CorruptionError(f"undecodable tombstone: {e}", group=group) from e
    return HardState(term=term, vote=vote)


def keep(txn: Any, dbs: Any, group: int, hs: HardState) -> HardState:
    """Record (raise) ``group``'s tombstone in ``txn`` from the hard state of a replica
    being destroyed; returns the hard state a replica created later starts from."""
    top = floor(hs, read(txn, dbs, group))
    txn.put(
        keys.tombstone_key(group), codec.seal(group, _RECORD.pack(top.term, top.vote)), db=dbs.meta
    )
    return HardState(term=top.term, vote=top.vote)
