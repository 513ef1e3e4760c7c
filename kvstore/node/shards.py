"""The driver's shard chores: admin entries in a group's log, groups a split starts and
merge sources a merge ends.

Rules: an admin command (kvstore.shard.commands) is one log entry of its own, answered
with its apply result when the entry at its ProposalId's index applies with the same
term (another term there: lost, definite). A group created by a split on this node starts
after the persist that created it; where this node led the parent, it campaigns at once.
A merge source whose replica a CommitMerge destroyed stops after that persist; what was
pending on it fails as a stale route (nothing after its PrepareMerge could apply). A
frozen merge source takes no membership change (its members must all reach the merge).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from kvstore.consensus.types import (
    JOINING,
    Entry,
    Message,
    MessageType,
    NotLeaderError,
    ProposalDroppedError,
    Role,
)
from kvstore.node import log
from kvstore.node.errors import InvalidOp, NotLeaderOp, StaleRouteOp, UnavailableOp
from kvstore.node.pending import GroupState, fail
from kvstore.node.persist import ShardChanges
from kvstore.shard import descriptor as desc
from kvstore.storage.errors import CorruptionError
from kvstore.storage.snapshot import image_shard

if TYPE_CHECKING:
    from kvstore.node.driver import NodeDriver


def propose_admin_entries(g: GroupState, not_leader: Callable[[GroupState], NotLeaderOp]) -> None:
    admin, g.admin = g.admin, []
    for a in admin:
        try:
            pid = g.core.propose(a.data)
        except NotLeaderError:
            fail(a.fut, not_leader(g))
            continue
        except ProposalDroppedError as e:
            fail(a.fut, UnavailableOp(f"admin command dropped: {e}", definite=True))
            continue
        g.admin_inflight[pid.index] = (pid.term, a)


def resolve_admin(
    g: GroupState,
    committed: tuple[Entry, ...],
    results: dict[int, int],
    answer: Callable[[Any, Any], None],
) -> None:
    """Answer the admin proposals among ``committed`` (``answer(fut, value)``)."""
    for e in committed:
        item = g.admin_inflight.pop(e.index, None)
        if item is None:
            continue
        term, a = item
        if term == e.term:
            answer(a.fut, results.get(e.index, 0))
        else:
            fail(a.fut, UnavailableOp("admin command lost", definite=True))


def start_created(driver: NodeDriver, shards: ShardChanges) -> Iterator[tuple[int, int]]:
    """(new group, parent group or 0) for each group a split created that is not running."""
    parent = {new: g for g, res in shards.admin_results.items() for new in res.values() if new}
    for gid in shards.created:
        if gid not in driver.groups:
            yield gid, parent.get(gid, 0)


def stop_merged(driver: NodeDriver, shards: ShardChanges) -> None:
    """Stop the replicas of merge sources this persist destroyed."""
    for problem in shards.merge_anomalies:
        log.event("merge_source_incomplete", level=50, problem=problem)
    for target, source in shards.merged:
        g = driver.groups.pop(source, None)
        driver.metrics.forget_shard(source)
        if g is not None:
            g.fail_all(StaleRouteOp(f"stale route: shard {source} merged into shard {target}"))
        log.event("shard_merged", group=target, source=source)


def frozen_merge_source(driver: NodeDriver, group: int) -> InvalidOp | None:
    """The refusal of a membership change when ``group`` is a merge source frozen by a
    PrepareMerge (None: not frozen)."""
    d = driver.storage.group(group).view.shard
    if d is None or not d.merging_into:
        return None
    return InvalidOp(
        f"shard {group} is merging into shard {d.merging_into}: no membership change "
        "until the merge commits or rolls back",
        definite=True,
    )


def parent_led(driver: NodeDriver, parent: int) -> bool:
    p = driver.groups.get(parent)
    return p is not None and p.role == Role.LEADER


def add_empty_replica(driver: NodeDriver, group: int) -> bool:
    """Start a replica of ``group`` with no state (False: one runs here already). It owns
    no keys (no descriptor) until a snapshot from the group's leader installs one."""
    if group in driver.groups:
        return False
    driver.groups[group] = driver._make_group(group)
    log.event("replica_added", group=group)
    return True


def snapshot_fits(driver: NodeDriver, m: Message) -> bool:
    """May this snapshot message reach its core? Not while another local replica's range
    overlaps the snapshot's (a lagging parent that has not applied a split yet): its
    entries would overwrite the newer data (TiKV #7002). The leader retries later. A
    merge source frozen into the snapshot's group does not stop it: the install destroys
    it in the same transaction (a replica that lagged past the CommitMerge)."""
    if m.snapshot is None or not m.snapshot.data:
        return True
    try:
        shard = image_shard(m.group, m.snapshot.metadata.index, m.snapshot.data)
        d = desc.decode(shard) if shard else None
    except (CorruptionError, ValueError):
        return True  # the storage refuses it on install, with the reason
    if d is None:
        return True
    for gid in driver.groups:
        other = driver.storage.group(gid).view.shard
        if gid != m.group and other is not None and other.overlaps(d):
            if other.merging_into == m.group and d.epoch.version > other.epoch.version:
                continue  # a merge source the install absorbs (storage.writer)
            return False
    return True


def adopt_unknown(driver: NodeDriver, m: Message) -> GroupState | None:
    """A message for a group this sharded node does not run. A snapshot that fits (see
    ``snapshot_fits``) starts the replica, which then owns the snapshot's range; a
    leader's append (heartbeat) is answered "I have nothing, send a snapshot" ("I am
    here") as an empty replica
    would answer it (the cores' join contract), without creating anything, so nothing is
    written for a group this node may never host (and a split applied here later finds
    no half-made replica in its way). Anything else: None (dropped)."""
    me = driver.config.node_id
    if m.to != me:
        return None
    if m.snapshot is not None:
        if not snapshot_fits(driver, m):
            return None
        add_empty_replica(driver, m.group)
        return driver.groups[m.group]
    ask = empty_replica_answer(me, m)
    if ask is None:
        return None
    driver.send([ask])
    return None


def empty_replica_answer(me: int, m: Message) -> Message | None:
    """What an empty replica answers a leader's APPEND, HEARTBEAT or ACCEPT for a group
    node ``me`` does not run (the cores' join contract: "I have nothing, send a
    snapshot"); None for any other message. Pure: the node and the simulation share it."""
    if m.type == MessageType.APPEND:
        ask = Message(
            type=MessageType.APPEND_RESP,
            group=m.group,
            from_=me,
            to=m.from_,
            term=m.term,
            index=0,
            reject=True,
        )
    elif m.type in (MessageType.HEARTBEAT, MessageType.PAXOS_HEARTBEAT):
        # A leader that lost track of us only heartbeats; answering makes it send an
        # append (or accept), which gets the snapshot request above.
        kind = (
            MessageType.HEARTBEAT_RESP
            if m.type == MessageType.HEARTBEAT
            else MessageType.PAXOS_HEARTBEAT_RESP
        )
        ask = Message(
            type=kind, group=m.group, from_=me, to=m.from_, term=m.term, context=m.context
        )
    elif m.type == MessageType.ACCEPT:
        ask = Message(
            type=MessageType.ACCEPTED,
            group=m.group,
            from_=me,
            to=m.from_,
            term=m.term,
            index=0,
            reject=True,
            context=JOINING,
        )
    else:
        return None
    return ask
