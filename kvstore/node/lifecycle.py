"""A sharded node's replica lifecycle: which consensus groups it starts and stops, and
what it does with a message for a group it does not run. Written once, against the
``Replicas`` protocol, and run both by the node driver (kvstore/node/shards.py
``DriverReplicas``) and by the sharded simulation (tests/sim/shard_cluster.py), so the
simulation checks the rules production runs.

Rules this module keeps:
- A group a split created starts after the persist that created it (its state is
  durable then), unless a replica of it runs here already (a snapshot from the new
  group's leader made it first: kept, nothing overwritten, TiKV's rule). A replica that
  ran here with no state (a vote request started it, below) is started again on the
  state the split wrote, which keeps its term and vote. Where this node led the parent
  it campaigns at once: every member applies the same split, so there is no election
  timeout to wait.
- A merge source whose replica a CommitMerge destroyed stops after that persist; what was
  pending on it fails as a stale route (nothing after its PrepareMerge could apply).
- A message for a group not running here: a snapshot that fits starts an empty replica,
  which the snapshot then fills (it owns the snapshot's range); a vote request (VOTE,
  PRE_VOTE, PREPARE) starts one that answers it where the node never held the group (no
  tombstone; TiKV's uninitialized peer): it acknowledged nothing, so voting with an
  empty log is safe, and a split's new shard whose other replicas caught up their
  parent by a snapshot past the split gets a leader only so (FINDINGS F13); a leader's
  append, heartbeat or accept gets the answer an empty replica would give ("send me a
  snapshot"), creating nothing; anything else is dropped.
- A replica started for a group whose replica this node destroyed before (moved away,
  then back) is the same voter to its peers: the storage starts its hard state at the
  group's tombstone (kvstore/storage/tombstone.py), so it keeps the promises (term and
  vote, promised ballot) of the destroyed one (FINDINGS F12). Until a snapshot fills
  it (no descriptor yet) and its log reaches the last entry the destroyed one stored
  (tombstone.covers: Raft by (term, index), Multi-Paxos by index), it answers no vote
  request (VOTE, PRE_VOTE, PREPARE) but a Raft candidate's whose log reaches that entry,
  and the driver does not let it campaign (NodeDriver.short_of_tombstone): the destroyed
  replica may have acknowledged entries a stale candidate lacks, and an empty log, or
  one filled from an image older than those entries (a leader that has not applied the
  removal, or reuses an image built before it), would grant that candidate, which could
  then overwrite committed entries. To a Raft leader in a term below the tombstone's
  (whose snapshot its core drops as stale) the node answers an append, heartbeat or
  snapshot with the tombstone's term, so that leader steps down and the group elects one
  that can fill the replica: without CheckQuorum and PreVote the core stays silent, and
  a replica with no membership never campaigns to make the term known (sharded
  simulation, raft seed 30418).
- A snapshot fits unless another local replica's range overlaps it (a lagging parent
  that has not applied a split yet: its entries would overwrite newer data, TiKV #7002);
  a merge source frozen into the snapshot's group does not stop it (the install destroys
  it in the same transaction: a replica that lagged past the CommitMerge).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from kvstore.consensus.types import JOINING, HardState, Message, MessageType
from kvstore.node.persist import ShardChanges
from kvstore.shard import descriptor as desc
from kvstore.shard.descriptor import Descriptor
from kvstore.storage.errors import CorruptionError
from kvstore.storage.snapshot import image_shard


class Replicas(Protocol):
    """What the lifecycle rules need of a node."""

    @property
    def node_id(self) -> int: ...

    def hosted(self) -> Iterable[int]:
        """The groups with a replica running here."""
        ...

    def shard(self, group: int) -> Descriptor | None:
        """The local replica's descriptor (None: none yet, or not sharded)."""
        ...

    def leads(self, group: int) -> bool: ...

    def tombstone(self, group: int) -> HardState | None:
        """The promises kept of a replica of ``group`` this node destroyed (None: none;
        kvstore/storage/tombstone.py)."""
        ...

    def holds_destroyed_log(self, group: int) -> bool:
        """Does the local replica's log reach the last entry a destroyed replica of
        ``group`` stored (kvstore/storage/tombstone.py covers)?"""
        ...

    def candidate_holds_destroyed_log(self, group: int, log_term: int, index: int) -> bool:
        """Raft: does a candidate's log ending at (``log_term``, ``index``) reach it?
        Always False under Multi-Paxos and for a tombstone without the entry's term."""
        ...

    def start(self, group: int, parent: int) -> None:
        """Start the replica of ``group`` that the split of ``parent`` created here
        (replacing one that ran here with no state)."""
        ...

    def start_empty(self, group: int) -> None:
        """Start an empty replica of ``group`` for a snapshot to fill."""
        ...

    def campaign(self, group: int) -> None: ...

    def stop(self, group: int, merged_into: int) -> None:
        """Stop the replica of a merge source the persist destroyed."""
        ...

    def send(self, m: Message) -> None: ...

    def merge_anomaly(self, problem: str) -> None:
        """A CommitMerge applied over an incomplete local source (lost durable state)."""
        ...


def after_persist(r: Replicas, changes: ShardChanges) -> list[int]:
    """Stop the merge sources and start the groups the persist's splits created; returns
    the groups started."""
    for problem in changes.merge_anomalies:
        r.merge_anomaly(problem)
    for target, source in changes.merged:
        r.stop(source, target)
    parents = {new: g for g, res in changes.admin_results.items() for new in res.values() if new}
    started = []
    for gid in changes.created:
        # The split wrote the group's state only where none was stored: a replica running
        # here then had none (a vote request started it).
        parent = parents.get(gid, 0)
        r.start(gid, parent)
        started.append(gid)
        if parent and r.leads(parent):
            r.campaign(gid)
    return started


def receive_unknown(r: Replicas, m: Message) -> bool:
    """``m`` is for a group not running here: True when a replica was started for it (a
    fitting snapshot; step ``m`` into it), else False (answered as an empty replica, or
    dropped)."""
    if m.to != r.node_id:
        return False
    if m.snapshot is not None:
        if not snapshot_fits(r, m):
            return False
        r.start_empty(m.group)
        return True
    if m.type in VOTE_REQUESTS and r.tombstone(m.group) is None:
        r.start_empty(m.group)
        return True
    ask = empty_replica_answer(r.node_id, m)
    if ask is not None:
        r.send(ask)
    return False


VOTE_REQUESTS = frozenset({MessageType.VOTE, MessageType.PRE_VOTE, MessageType.PREPARE})


def may_vote(r: Replicas, m: Message) -> bool:
    """May ``m`` reach the replica of its group running here (see the module rules)?
    False only for a vote request to a replica of a group with a tombstone here that a
    snapshot has not filled yet, or whose log is short of the destroyed one's."""
    if m.type not in VOTE_REQUESTS or r.tombstone(m.group) is None:
        return True
    if r.shard(m.group) is not None and r.holds_destroyed_log(m.group):
        return True
    # Raft: the core grants only a candidate whose log is at least as up to date as this
    # replica's; one that also reaches the destroyed replica's log holds every entry
    # either acknowledged (tombstone.py), so a short or empty replica may take it.
    return m.type != MessageType.PREPARE and r.candidate_holds_destroyed_log(
        m.group, m.log_term, m.index
    )


def answer_stale_leader(r: Replicas, m: Message) -> None:
    """Tell a Raft leader in a term below the tombstone's of an unfilled replica here
    that term (see the module rules); the core then drops ``m`` as stale."""
    if m.type not in _LEADER_TO_FOLLOWER or r.shard(m.group) is not None:
        return
    dead = r.tombstone(m.group)
    if dead is not None and m.term < dead.term:
        r.send(
            Message(
                type=MessageType.APPEND_RESP,
                group=m.group,
                from_=r.node_id,
                to=m.from_,
                term=dead.term,
                reject=True,
            )
        )


_LEADER_TO_FOLLOWER = frozenset({MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT})


def snapshot_fits(r: Replicas, m: Message) -> bool:
    """May this snapshot message reach its core (see the module rules)? The leader
    retries one that does not."""
    if m.snapshot is None or not m.snapshot.data:
        return True
    try:
        shard = image_shard(m.group, m.snapshot.metadata.index, m.snapshot.data)
        d = desc.decode(shard) if shard else None
    except (CorruptionError, ValueError):
        return True  # the storage refuses it on install, with the reason
    if d is None:
        return True
    for gid in r.hosted():
        other = r.shard(gid)
        if gid != m.group and other is not None and other.overlaps(d):
            if other.merging_into == m.group and d.epoch.version > other.epoch.version:
                continue  # a merge source the install absorbs (shard_apply.absorb_frozen_sources)
            return False
    return True


def empty_replica_answer(me: int, m: Message) -> Message | None:
    """What an empty replica answers a leader's APPEND, HEARTBEAT or ACCEPT for a group
    node ``me`` does not run (the cores' join contract: "I have nothing, send a
    snapshot"); None for any other message."""
    if m.type == MessageType.APPEND:
        return Message(
            type=MessageType.APPEND_RESP,
            group=m.group,
            from_=me,
            to=m.from_,
            term=m.term,
            index=0,
            reject=True,
        )
    if m.type in (MessageType.HEARTBEAT, MessageType.PAXOS_HEARTBEAT):
        # A leader that lost track of us only heartbeats; answering makes it send an
        # append (or accept), which gets the snapshot request above.
        kind = (
            MessageType.HEARTBEAT_RESP
            if m.type == MessageType.HEARTBEAT
            else MessageType.PAXOS_HEARTBEAT_RESP
        )
        return Message(
            type=kind, group=m.group, from_=me, to=m.from_, term=m.term, context=m.context
        )
    if m.type == MessageType.ACCEPT:
        return Message(
            type=MessageType.ACCEPTED,
            group=m.group,
            from_=me,
            to=m.from_,
            term=m.term,
            index=0,
            reject=True,
            context=JOINING,
        )
    return None
