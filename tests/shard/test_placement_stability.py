"""Placement decisions are stable (kvstore.shard.placement): balancing never undoes its own
step or an operator's right away, and never moves leadership back and forth.

The rounds below model what the placement loop sees: disk use that changes every round,
learners that take one to three rounds to catch up, and a leader or membership that
changed a moment ago.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import pytest

from kvstore.shard.placement import (
    AddLearner,
    GroupInfo,
    NodeInfo,
    Op,
    Promote,
    Remove,
    TransferLeader,
    plan,
)

DOWN_AFTER = 30.0


@dataclass
class Group:
    voters: set[int]
    leader: int
    learners: dict[int, int] = field(default_factory=dict)
    """learner -> rounds left until it has caught up"""


def _random_cluster(rng: random.Random) -> tuple[list[int], dict[int, Group]]:
    nodes = list(range(1, rng.randint(3, 7) + 1))
    groups = {}
    for gid in range(rng.randint(1, 10)):
        voters = set(rng.sample(nodes, min(3, len(nodes))))
        groups[gid] = Group(voters, leader=min(voters))
    return nodes, groups


def _run(seed: int, rounds: int = 60) -> tuple[list[tuple[int, Op]], dict[int, Group], list[int]]:
    rng = random.Random(seed)
    ids, groups = _random_cluster(rng)
    history: list[tuple[int, Op]] = []
    for r in range(rounds):
        nodes = [NodeInfo(n, disk_used=rng.randint(0, 100), disk_cap=10_000) for n in ids]
        infos = [
            GroupInfo(
                gid,
                tuple(sorted(g.voters)),
                tuple(sorted(g.learners)),
                g.leader,
                frozenset(n for n, left in g.learners.items() if left <= 0),
            )
            for gid, g in groups.items()
        ]
        for op in plan(infos, nodes, down_after=DOWN_AFTER):
            history.append((r, op))
            g = groups[op.group]
            if isinstance(op, AddLearner):
                g.learners[op.node] = rng.randint(1, 3)
            elif isinstance(op, Promote):
                del g.learners[op.node]
                g.voters.add(op.node)
            elif isinstance(op, Remove):
                g.voters.discard(op.node)
                g.learners.pop(op.node, None)
            else:
                g.leader = op.node
        for g in groups.values():
            for n in g.learners:
                g.learners[n] -= 1
    return history, groups, ids


@pytest.mark.parametrize("seed", range(40))
def test_balancing_never_removes_what_it_just_added_and_settles(seed: int) -> None:
    history, groups, ids = _run(seed)
    added: set[tuple[int, int]] = set()
    transfers: dict[int, int] = {}
    for _, op in history:
        if isinstance(op, AddLearner):
            added.add((op.group, op.node))
        elif isinstance(op, Remove):
            assert (op.group, op.node) not in added, f"added then removed: {op} in {history}"
        elif isinstance(op, TransferLeader):
            transfers[op.group] = transfers.get(op.group, 0) + 1
    assert all(n <= 3 for n in transfers.values()), f"leadership ping-pong: {history}"
    assert not [op for r, op in history if r >= 50], f"still moving: {history[-5:]}"
    counts = dict.fromkeys(ids, 0)
    for g in groups.values():
        for n in g.voters:
            counts[n] += 1
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_over_replicated_drops_a_non_leader_among_equals_whatever_the_disk_says() -> None:
    # Nodes 1 and 2 hold the most replicas (2 each). Node 1 leads. Whichever disk is
    # fuller, the step is the same: remove node 2 (no leadership move needed).
    groups = [GroupInfo(1, (1, 2, 3, 4), leader=1), GroupInfo(2, (1, 2), leader=2, want=2)]
    for disk1, disk2 in ((90, 10), (10, 90)):
        nodes = [
            NodeInfo(1, disk_used=disk1, disk_cap=1000),
            NodeInfo(2, disk_used=disk2, disk_cap=1000),
            NodeInfo(3),
            NodeInfo(4),
        ]
        ops = plan(groups, nodes, down_after=DOWN_AFTER, rebalance=False)
        assert ops == [Remove(1, 2, "over-replicated")]


def test_one_replica_rebalance_at_a_time_no_overshoot() -> None:
    # Nodes 1-3 hold 4 replicas each, node 4 none: every group could add a learner on
    # node 4 in one round, and node 4 would end with 4 while the others drop to 3.
    nodes = [NodeInfo(n) for n in (1, 2, 3, 4)]
    groups = [GroupInfo(g, (1, 2, 3), leader=2 + g % 2) for g in range(1, 5)]
    ops = plan(groups, nodes, down_after=DOWN_AFTER)
    assert [op for op in ops if isinstance(op, AddLearner)] == [
        AddLearner(1, 4, "rebalance from node 3")
    ]
    # While that learner catches up, no other group starts a replica move.
    moving = [replace(groups[0], learners=(4,)), *groups[1:]]
    ops = plan(moving, nodes, down_after=DOWN_AFTER)
    assert not [op for op in ops if op.group != 1 and not isinstance(op, TransferLeader)]


def test_a_fresh_leader_is_not_moved_for_balance() -> None:
    # Node 1 leads three groups, node 2 one: balance would move one leadership away,
    # but not that of a group whose leader an operator (or an election) just chose.
    nodes = [NodeInfo(n) for n in (1, 2, 3)]
    groups = [
        GroupInfo(1, (1, 2, 3), leader=1, leader_for=5.0),
        GroupInfo(2, (1, 2, 3), leader=1, leader_for=5.0),
        GroupInfo(3, (1, 2, 3), leader=1, leader_for=5.0),
        GroupInfo(4, (1, 2, 3), leader=2),
    ]
    assert plan(groups, nodes, down_after=DOWN_AFTER, hold=60.0) == []
    settled = [replace(g, leader_for=61.0) for g in groups]
    ops = plan(settled, nodes, down_after=DOWN_AFTER, hold=60.0)
    assert ops and all(isinstance(op, TransferLeader) for op in ops)


def test_a_fresh_membership_is_not_rebalanced() -> None:
    # An operator just moved group 1 onto node 1, the most loaded node: balancing would
    # move it straight back; it waits out the hold first.
    nodes = [NodeInfo(n) for n in (1, 2, 3, 4)]
    groups = [
        GroupInfo(1, (1, 2, 3), leader=2, members_for=3.0),
        GroupInfo(2, (1, 2, 3), leader=3, members_for=3.0),
    ]
    assert plan(groups, nodes, down_after=DOWN_AFTER, hold=60.0) == []
    later = [replace(g, members_for=100.0) for g in groups]
    assert [type(op) for op in plan(later, nodes, down_after=DOWN_AFTER, hold=60.0)] == [AddLearner]


def test_a_pinned_group_is_repaired_but_never_balanced_nor_counted_as_moving() -> None:
    # The meta group (0) sorts first; planning a balance step for it (which the loop
    # then must not run) used to count a phantom replica on node 4 and block group 1.
    nodes = [NodeInfo(n) for n in (1, 2, 3, 4)]
    groups = [GroupInfo(0, (1, 2, 3), leader=1), GroupInfo(1, (1, 2, 3), leader=2)]
    ops = plan(groups, nodes, down_after=DOWN_AFTER, pinned={0})
    assert ops == [AddLearner(1, 4, "rebalance from node 3")]
    gone = [NodeInfo(1), NodeInfo(2), NodeInfo(3, liveness="dead", down_for=100.0), NodeInfo(4)]
    ops = plan(groups[:1], gone, down_after=DOWN_AFTER, pinned={0})
    assert ops == [AddLearner(0, 4, "replace node 3")]


def test_an_over_replicated_group_whose_leader_cannot_hand_over_drops_another() -> None:
    # Voters 1-3 draining (1 leads), 6 down for good: leadership has nowhere to go, but
    # the dead voter can go at once (the convergence property test found this, rarely).
    nodes = [
        NodeInfo(1, draining=True),
        NodeInfo(2, draining=True),
        NodeInfo(3, draining=True),
        NodeInfo(4),
        NodeInfo(5),
        NodeInfo(6, liveness="dead", down_for=100.0),
    ]
    ops = plan([GroupInfo(1, (1, 2, 3, 6), leader=1)], nodes, down_after=DOWN_AFTER)
    assert ops == [Remove(1, 6, "gone")]
