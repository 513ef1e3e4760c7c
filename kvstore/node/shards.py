"""The driver's shard chores: admin entries in a group's log, groups a split starts and
merge sources a merge ends.

Rules: an admin command (kvstore.shard.commands) is one log entry of its own, answered
with its apply result when the entry at its ProposalId's index applies with the same
term (another term there: lost, definite). A frozen merge source takes no membership
change (its members must all reach the merge). Which groups start and stop (splits,
merges, snapshots for groups not running here) is kvstore/node/lifecycle.py, which the
driver runs through ``DriverReplicas`` and the sharded simulation through its own nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from kvstore.consensus.types import (
    Entry,
    HardState,
    Message,
    NotLeaderError,
    ProposalDroppedError,
    Role,
)
from kvstore.node import log
from kvstore.node.errors import InvalidOp, NotLeaderOp, StaleRouteOp, UnavailableOp
from kvstore.node.pending import GroupState, fail
from kvstore.shard import descriptor as desc
from kvstore.storage import tombstone

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


def add_empty_replica(driver: NodeDriver, group: int) -> bool:
    """Start a replica of ``group`` with no state (False: one runs here already). It owns
    no keys (no descriptor) until a snapshot from the group's leader installs one."""
    if group in driver.groups:
        return False
    driver.groups[group] = driver._make_group(group)
    log.event("replica_added", group=group)
    return True


class DriverReplicas:
    """The node driver as the lifecycle rules see it (kvstore/node/lifecycle.py)."""

    __slots__ = ("driver",)

    def __init__(self, driver: NodeDriver) -> None:
        self.driver = driver

    @property
    def node_id(self) -> int:
        return self.driver.config.node_id

    def hosted(self) -> Iterable[int]:
        return self.driver.groups.keys()

    def shard(self, group: int) -> desc.Descriptor | None:
        return self.driver.storage.group(group).view.shard

    def leads(self, group: int) -> bool:
        g = self.driver.groups.get(group)
        return g is not None and g.role == Role.LEADER

    def tombstone(self, group: int) -> HardState | None:
        return self.driver.storage.tombstone(group)

    def holds_destroyed_log(self, group: int) -> bool:
        return self.driver.log_covers(group, self.driver.storage.tombstone_log(group))

    def candidate_holds_destroyed_log(self, group: int, log_term: int, index: int) -> bool:
        mark = self.driver.storage.tombstone_log(group)
        raft = self.driver.config.consensus == "raft"
        return raft and mark[0] > 0 and tombstone.covers(log_term, index, mark, by_term=True)

    def start(self, group: int, parent: int) -> None:
        old = self.driver.groups.get(group)
        if old is not None:  # one with no state (lifecycle.after_persist): nothing pends
            old.fail_all(UnavailableOp("the replica restarted on its split state", definite=True))
        self.driver.groups[group] = self.driver._make_group(group)
        log.event("shard_started", group=group, parent=parent, replaced=old is not None)

    def start_empty(self, group: int) -> None:
        add_empty_replica(self.driver, group)

    def campaign(self, group: int) -> None:
        g = self.driver.groups[group]
        if not self.driver.short_of_tombstone(g):
            g.core.campaign()

    def stop(self, group: int, merged_into: int) -> None:
        g = self.driver.groups.pop(group, None)
        self.driver.metrics.forget_shard(group)
        if g is not None:
            g.fail_all(StaleRouteOp(f"stale route: shard {group} merged into shard {merged_into}"))
        log.event("shard_merged", group=merged_into, source=group)

    def send(self, m: Message) -> None:
        self.driver.send([m])

    def merge_anomaly(self, problem: str) -> None:
        log.event("merge_source_incomplete", level=50, problem=problem)
