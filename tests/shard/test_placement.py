"""The placement planner (kvstore.shard.placement): repair, spread, quorum safety.

The property tests run the planner against a small model of the cluster: each round the
planned steps are applied as the groups would apply them (a learner catches up by the
next round, a group whose leader's node is not alive elects another live voter when it
has a quorum), and the plan is computed again from the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kvstore.shard.placement import (
    AddLearner,
    GroupInfo,
    NodeInfo,
    Op,
    Promote,
    Remove,
    TransferLeader,
    decommission_blockers,
    majority,
    plan,
)

DOWN_AFTER = 30.0


def dead(n: int, down_for: float = 100.0) -> NodeInfo:
    return NodeInfo(n, liveness="dead", phi=50.0, down_for=down_for)


@dataclass
class G:
    id: int
    voters: set[int]
    learners: set[int] = field(default_factory=set)
    leader: int = 0
    caught: set[int] = field(default_factory=set)
    want: int = 3

    def info(self) -> GroupInfo:
        return GroupInfo(
            self.id,
            tuple(sorted(self.voters)),
            tuple(sorted(self.learners)),
            self.leader,
            frozenset(self.caught),
            self.want,
        )


class Model:
    def __init__(self, nodes: list[NodeInfo], groups: list[G]) -> None:
        self.nodes = {n.id: n for n in nodes}
        self.groups = {g.id: g for g in groups}

    def up(self, n: int) -> bool:
        return self.nodes[n].alive

    def has_quorum(self, g: G) -> bool:
        return sum(1 for v in g.voters if self.up(v)) >= majority(len(g.voters))

    def apply(self, op: Op) -> None:
        g = self.groups[op.group]
        had = self.has_quorum(g)
        if isinstance(op, AddLearner):
            assert op.node not in g.voters | g.learners, op
            assert self.nodes[op.node].alive and not self.nodes[op.node].draining, op
            g.learners.add(op.node)
        elif isinstance(op, Promote):
            assert op.node in g.learners and op.node in g.caught, op
            g.learners.discard(op.node)
            g.voters.add(op.node)
        elif isinstance(op, Remove):
            assert op.node != g.leader, f"removes the leader: {op}"
            g.voters.discard(op.node)
            g.learners.discard(op.node)
        else:
            assert op.node in g.voters and self.up(op.node), op
            g.leader = op.node
        if had:
            assert self.has_quorum(g), f"{op} left group {g.id} without a quorum: {g}"

    def round(self) -> list[Op]:
        ops = plan(
            [g.info() for g in self.groups.values()],
            list(self.nodes.values()),
            down_after=DOWN_AFTER,
        )
        assert len({op.group for op in ops}) == len(ops), f"two steps for one group: {ops}"
        for op in ops:
            self.apply(op)
        for g in self.groups.values():
            g.caught = set(g.learners)  # learners catch up by the next round
            if (g.leader and not self.up(g.leader)) or g.leader not in g.voters:
                g.leader = 0
            if not g.leader and self.has_quorum(g):
                g.leader = min(v for v in g.voters if self.up(v))
        return ops

    def converge(self, rounds: int = 200) -> None:
        for _ in range(rounds):
            if not self.round():
                return
        raise AssertionError("the plan did not converge")

    def counts(self) -> dict[int, int]:
        out = dict.fromkeys(self.nodes, 0)
        for g in self.groups.values():
            for n in g.voters | g.learners:
                out[n] += 1
        return out


def test_repairs_a_node_down_longer_than_down_after() -> None:
    nodes = [NodeInfo(1), NodeInfo(2), NodeInfo(3), dead(4), NodeInfo(5)]
    m = Model(nodes, [G(1, {1, 2, 4}, leader=1), G(2, {2, 3, 4}, leader=4)])
    first = m.round()
    # Add before remove: the replacement is a learner first, on the least loaded node.
    assert first[0] == AddLearner(1, 5, "replace node 4")
    m.converge()
    for g in m.groups.values():
        assert len(g.voters) == 3 and 4 not in g.voters and not g.learners
    assert m.counts()[4] == 0


def test_a_node_down_for_less_than_down_after_keeps_its_replicas() -> None:
    nodes = [NodeInfo(1), NodeInfo(2), NodeInfo(3), dead(4, down_for=5.0), NodeInfo(5)]
    suspect = NodeInfo(6, liveness="suspect", phi=6.0, down_for=20.0)
    groups = [G(1, {1, 2, 4}, leader=1), G(2, {2, 3, 6}, leader=2)]
    assert plan([g.info() for g in groups], [*nodes, suspect], down_after=DOWN_AFTER) == []


def test_moves_leadership_before_removing_the_leader() -> None:
    nodes = [NodeInfo(1), NodeInfo(2), NodeInfo(3), NodeInfo(4, draining=True)]
    g = GroupInfo(1, (2, 3, 4), leader=4)
    ops = plan([g], nodes, down_after=DOWN_AFTER)
    assert ops == [AddLearner(1, 1, "replace node 4")]
    over = GroupInfo(1, (1, 2, 3, 4), leader=4)
    (op,) = plan([over], nodes, down_after=DOWN_AFTER)
    assert isinstance(op, TransferLeader) and op.node in (1, 2, 3)
    (op,) = plan([GroupInfo(1, (1, 2, 3, 4), leader=2)], nodes, down_after=DOWN_AFTER)
    assert op == Remove(1, 4, "gone")


def test_never_removes_below_a_quorum_of_live_voters() -> None:
    # Four voters, one long down, one down briefly: removing the long-down one leaves
    # 2 live of 3; removing a live one would leave 1 of 3, so never that.
    nodes = [NodeInfo(1), NodeInfo(2), dead(3), dead(4, 1.0), NodeInfo(5)]
    ops = plan([GroupInfo(1, (1, 2, 3, 4), leader=1)], nodes, down_after=DOWN_AFTER)
    assert ops == [Remove(1, 3, "gone")]
    ops = plan([GroupInfo(1, (1, 2, 4, 5), leader=1)], nodes, down_after=DOWN_AFTER)
    assert [(type(op), op.node) for op in ops] == [(Remove, 4)]
    # Two voters, one long down and no spare node: nothing is removed or added.
    ops = plan([GroupInfo(1, (1, 3), leader=1, want=2)], nodes[:3:2], down_after=DOWN_AFTER)
    assert ops == []
    # A learner on a live node is not promoted when the group would lose its quorum.
    nodes = [NodeInfo(1), dead(2, 1.0), dead(3, 1.0), NodeInfo(4)]
    g = GroupInfo(1, (1, 2, 3), learners=(4,), leader=1, caught_up=frozenset({4}))
    assert plan([g], nodes, down_after=DOWN_AFTER) == []


def test_waits_for_a_learner_to_catch_up_then_promotes_it() -> None:
    nodes = [NodeInfo(i) for i in range(1, 5)]
    g = GroupInfo(1, (1, 2), learners=(4,), leader=1)
    assert plan([g], nodes, down_after=DOWN_AFTER) == []
    ready = GroupInfo(1, (1, 2), learners=(4,), leader=1, caught_up=frozenset({4}))
    assert plan([ready], nodes, down_after=DOWN_AFTER) == [Promote(1, 4, "learner caught up")]


def test_spreads_replicas_and_leaders() -> None:
    nodes = [NodeInfo(i) for i in range(1, 6)]
    groups = [G(i, {1, 2, 3}, leader=1) for i in range(1, 6)]
    m = Model(nodes, groups)
    m.converge()
    counts = m.counts()
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    leaders: dict[int, int] = {}
    for g in m.groups.values():
        leaders[g.leader] = leaders.get(g.leader, 0) + 1
    assert max(leaders.values()) <= 2, leaders


def test_decommission_blockers_name_the_group() -> None:
    nodes = [NodeInfo(1), NodeInfo(2), NodeInfo(3)]
    groups = [GroupInfo(1, (1, 2, 3), leader=1)]
    (why,) = decommission_blockers(groups, nodes, 3)
    assert "group 1 needs 3 replicas" in why and "only 2 live nodes" in why
    nodes = [NodeInfo(1), dead(2), NodeInfo(3), NodeInfo(4), dead(5), NodeInfo(6)]
    groups = [GroupInfo(1, (2, 3, 5), leader=3)]
    (why,) = decommission_blockers(groups, nodes, 3)
    assert "without a quorum" in why
    assert decommission_blockers(groups, nodes, 1) == []
    nodes[4] = NodeInfo(5)
    assert decommission_blockers(groups, nodes, 3) == []


@st.composite
def clusters(draw: st.DrawFn) -> Model:
    n = draw(st.integers(3, 7))
    nodes = []
    for i in range(1, n + 1):
        kind = draw(st.sampled_from(["alive", "alive", "alive", "dead", "brief", "draining"]))
        if kind in ("dead", "brief"):
            nodes.append(dead(i, 100.0 if kind == "dead" else 1.0))
        else:
            nodes.append(NodeInfo(i, draining=kind == "draining"))
    ids = [x.id for x in nodes]
    groups = []
    for gid in range(draw(st.integers(1, 8))):
        voters = set(draw(st.lists(st.sampled_from(ids), min_size=1, max_size=5, unique=True)))
        groups.append(G(gid, voters))
    m = Model(nodes, groups)
    for g in groups:
        if m.has_quorum(g):
            g.leader = draw(st.sampled_from(sorted(v for v in g.voters if m.up(v))))
    return m


@settings(max_examples=150, deadline=None)
@given(clusters())
def test_repeated_plans_converge_and_never_lose_a_quorum(m: Model) -> None:
    usable = [n for n in m.nodes.values() if n.alive and not n.draining]
    brief = {n.id for n in m.nodes.values() if not n.alive and n.down_for < DOWN_AFTER}
    quorate = {g.id for g in m.groups.values() if m.has_quorum(g)}
    m.converge()  # Model.apply checks every step keeps each quorum
    for g in m.groups.values():
        if g.id not in quorate:
            continue
        assert m.has_quorum(g)
        if len(usable) >= g.want and not g.voters & brief:
            assert len(g.voters) == g.want and not g.learners, g
            assert all(m.nodes[v].alive and not m.nodes[v].draining for v in g.voters), g
    assume(len(usable) >= 3 and len(quorate) == len(m.groups) and not brief)
    counts = m.counts()
    spread = [counts[n.id] for n in usable]
    assert max(spread) - min(spread) <= 1, counts
    assert all(counts[n] == 0 for n in m.nodes if m.nodes[n] not in usable)


def test_an_operator_move_takes_its_steps_in_order() -> None:
    nodes = [NodeInfo(i) for i in range(1, 6)]
    m = Model(nodes, [G(1, {1, 2, 3}, leader=1), G(2, {1, 2, 3}, leader=2)])
    moves = {1: (1, 5)}
    steps: list[Op] = []
    for _ in range(10):
        infos = [g.info() for g in m.groups.values()]
        ops = [op for op in plan(infos, nodes, down_after=DOWN_AFTER, moves=moves) if op.group == 1]
        if not ops:
            break
        steps += ops
        for op in ops:
            m.apply(op)
        m.groups[1].caught = set(m.groups[1].learners)
    assert [type(op) for op in steps] == [AddLearner, Promote, TransferLeader, Remove]
    assert steps[-1] == Remove(1, 1, "move to node 5")
    assert m.groups[1].voters == {2, 3, 5}


def test_shards_taking_part_in_a_merge_get_no_step_until_it_is_over() -> None:
    # Shard 1 (target) and 2 (frozen source) merge on nodes 1-3; node 3 is long dead and
    # node 1 leads everything. Any step on 1 or 2 would roll the merge back: repair,
    # an operator move and balancing wait; shard 3 is repaired meanwhile, and no replica
    # is rebalanced anywhere (the counts are about to change).
    nodes = [NodeInfo(1), NodeInfo(2), dead(3), NodeInfo(4), NodeInfo(5)]
    merging = [GroupInfo(i, (1, 2, 3), leader=1, merging=True) for i in (1, 2)]
    other = GroupInfo(3, (1, 2, 3), leader=1)
    ops = plan([*merging, other], nodes, down_after=DOWN_AFTER, moves={2: (2, 4)})
    assert [op.group for op in ops] == [3], ops
    alive = [NodeInfo(i) for i in range(1, 6)]
    crowded = [GroupInfo(i, (1, 2, 3), leader=1, merging=i < 3) for i in range(1, 7)]
    ops = plan(crowded, alive, down_after=DOWN_AFTER)
    assert ops and all(isinstance(op, TransferLeader) and op.group > 2 for op in ops), ops
    # Once the merge is over (shard 2 gone, shard 1 no longer merging) both proceed.
    ops = plan([GroupInfo(1, (1, 2, 3), leader=1), other], nodes, down_after=DOWN_AFTER)
    assert {op.group for op in ops} == {1, 3}
