"""Placement planner: which small membership step each shard should take next. No I/O.

Input: every group's members and leader (the data shards and the meta group 0), the
nodes' liveness from the failure detector (with how long each has been judged down),
which nodes are draining (decommission) and their disk use. Output: at most one step per
group: add a learner, promote a caught-up learner, remove a replica, transfer leadership.
The caller executes the steps through each group's own conf changes and plans again from
what the groups then report, so a move is add learner -> (caught up) promote -> remove,
spread over rounds, and a crash between rounds leaves a valid, maybe over-replicated,
group.

Rules this module keeps:
- Never a step that leaves a group without a quorum of live voters when it had one: a
  voter is removed, or a learner promoted, only if the live voters afterwards are a
  majority of the voters afterwards; a leader is never removed (leadership moves first).
- One step per group per round; nothing for a group without a known leader, and
  nothing for a group taking part in a merge (``GroupInfo.merging``) until it is over:
  any membership change or leadership transfer would make the merge roll back.
- A node judged down for at least ``down_after`` seconds, or draining, is "gone": its
  replicas are replaced on live nodes (add first, remove after). A node only suspected,
  or down for less, keeps its replicas and receives none.
- New replicas go to usable nodes (alive, not draining, disk below ``DISK_FULL``) with
  the fewest replicas; rebalancing moves one replica at a time from the most to the least
  loaded usable node while they differ by 2 or more, and leadership from a node leading 2
  or more groups above one of the group's other voters. Both only move towards balance,
  so repeated plans converge.
- Balancing never thrashes: one replica rebalance at a time in the whole cluster, and
  none while any group carries a learner or an extra voter (a repair, a move or the
  previous rebalance is still settling), so the counts it decides on are never stale
  and no move overshoots; the over-replicated step drops a voter on the most loaded node,
  a non-leader before the leader among equals, decided by replica counts and ids only
  (never by disk use, which changes every round); a group whose leader or membership
  changed less than ``hold`` seconds ago (a user's transfer or move, an election, our
  own last step) is not balanced; ``pinned`` groups are repaired but never balanced.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

DISK_FULL = 0.9
"""A node whose disk use is above this fraction of its capacity receives no replicas."""
HOLD_DOWN_S = 60.0
"""A group whose leader or membership changed this recently is left alone by balancing."""

ALIVE = "alive"


@dataclass(frozen=True, slots=True)
class NodeInfo:
    id: int
    liveness: str = ALIVE
    """The failure detector's verdict: "alive", "suspect", "dead" or "unknown"."""
    phi: float = 0.0
    down_for: float = 0.0
    """Seconds the node has been judged not alive without a break (0 while alive)."""
    draining: bool = False
    disk_used: int = 0
    disk_cap: int = 0

    @property
    def alive(self) -> bool:
        return self.liveness == ALIVE

    @property
    def disk_full(self) -> bool:
        return self.disk_cap > 0 and self.disk_used > DISK_FULL * self.disk_cap


@dataclass(frozen=True, slots=True)
class GroupInfo:
    id: int
    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()
    leader: int = 0
    caught_up: frozenset[int] = frozenset()
    """Learners whose log has reached the leader's commit index."""
    want: int = 3
    """Replica count to keep."""
    leader_for: float = float("inf")
    """Seconds the current leader has been seen leading (the caller's observation)."""
    members_for: float = float("inf")
    """Seconds since the group's voters or learners last changed (as observed)."""
    merging: bool = False
    """A merge of this shard is under way (a frozen source, its target, or a merge a
    coordinator runs): no step until it is over."""


@dataclass(frozen=True, slots=True)
class AddLearner:
    group: int
    node: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Promote:
    group: int
    node: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Remove:
    group: int
    node: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TransferLeader:
    group: int
    node: int
    reason: str = ""


Op = AddLearner | Promote | Remove | TransferLeader


def majority(n: int) -> int:
    return n // 2 + 1


@dataclass(slots=True)
class _View:
    nodes: dict[int, NodeInfo]
    down_after: float
    replicas: dict[int, int] = field(default_factory=dict)
    leaders: dict[int, int] = field(default_factory=dict)

    def gone(self, n: int) -> bool:
        info = self.nodes.get(n)
        if info is None:
            return True  # not a node of the cluster any more
        return info.draining or (not info.alive and info.down_for >= self.down_after)

    def up(self, n: int) -> bool:
        info = self.nodes.get(n)
        return info is not None and info.alive

    def usable(self, n: int) -> bool:
        info = self.nodes[n]
        return info.alive and not info.draining and not info.disk_full

    def quorum_ok(self, voters: Iterable[int]) -> bool:
        vs = set(voters)
        return bool(vs) and sum(1 for v in vs if self.up(v)) >= majority(len(vs))

    def load(self, n: int) -> tuple[int, int, int]:
        info = self.nodes[n]
        return (self.replicas.get(n, 0), info.disk_used, n)


def plan(
    groups: Sequence[GroupInfo],
    nodes: Sequence[NodeInfo],
    *,
    down_after: float,
    moves: Mapping[int, tuple[int, int]] | None = None,
    rebalance: bool = True,
    hold: float = HOLD_DOWN_S,
    pinned: Collection[int] = (),
) -> list[Op]:
    """The next step of every group that needs one (see the module rules). ``moves``:
    group -> (from, to) asked by an operator; such a group takes only the move's steps.
    ``rebalance`` False: repairs and moves only. ``hold``: seconds a group's leader or
    membership must have been unchanged before balancing touches it. ``pinned``: groups
    never balanced (the meta group, found by its founding voters)."""
    moves = moves or {}
    v = _View({n.id: n for n in nodes}, down_after)
    for g in groups:
        for r in {*g.voters, *g.learners}:
            v.replicas[r] = v.replicas.get(r, 0) + 1
        if g.leader:
            v.leaders[g.leader] = v.leaders.get(g.leader, 0) + 1
    ops: list[Op] = []
    busy: set[int] = set()
    for g in sorted(groups, key=lambda g: g.id):
        if g.merging:
            # A membership change would make the merge roll back (the target's epoch
            # moved) or be refused (a frozen source); a merge needs every replica, so
            # it ends (commits or rolls back) within seconds, and a gone node's
            # replica is repaired then.
            busy.add(g.id)
            continue
        if g.id in moves:
            busy.add(g.id)
            op = move_step(g, v, *moves[g.id])
        else:
            op = _repair(g, v)
        if op is not None:
            ops.append(op)
            busy.add(g.id)
            _account(op, v)
    # One replica rebalance at a time, and only once every group has settled: counts
    # that still include a pending add (or miss a pending remove) would make several
    # groups leave the same node at once and then drop whichever replica ties.
    settled = not busy and all(len(g.voters) <= g.want and not g.learners for g in groups)
    for g in sorted(groups, key=lambda g: g.id):
        if not rebalance or g.id in busy or g.id in pinned or not _healthy(g, v):
            continue
        step: Op | None = None
        if settled and g.members_for >= hold:
            step = _rebalance_replica(g, groups, v)
            if step is not None:
                settled = False
        if step is None and g.leader_for >= hold:
            step = _rebalance_leader(g, v)
        if step is not None:
            ops.append(step)
            busy.add(g.id)
            _account(step, v)
    return ops


def _account(op: Op, v: _View) -> None:
    if isinstance(op, AddLearner):
        v.replicas[op.node] = v.replicas.get(op.node, 0) + 1
    elif isinstance(op, Remove):
        v.replicas[op.node] = v.replicas.get(op.node, 0) - 1


def _healthy(g: GroupInfo, v: _View) -> bool:
    return (
        bool(g.leader)
        and not g.learners
        and len(g.voters) == g.want
        and all(v.up(n) and not v.gone(n) for n in g.voters)
    )


def _repair(g: GroupInfo, v: _View) -> Op | None:
    if not g.leader or g.leader not in g.voters:
        return None
    voters = set(g.voters)
    for n in sorted(g.learners):
        if v.gone(n) or not v.up(n):
            return Remove(g.id, n, f"learner on node {n}, which is not alive")
    for n in sorted(g.learners):
        if n in g.caught_up and v.quorum_ok(voters | {n}):
            return Promote(g.id, n, "learner caught up")
    if g.learners:
        return None  # a learner is catching up: one change at a time
    gone = sorted(n for n in voters if v.gone(n))
    kept = len(voters) - len(gone)
    if len(voters) > g.want:
        # Over-replicated (a move's add is done): drop a gone replica first, then one
        # on a node not alive now, else the one on the most loaded node; among equals a
        # non-leader (no transfer needed), then the highest id. Never by disk use: it
        # changes between rounds, and a tie broken differently next round would move
        # leadership back and forth instead of removing anything.
        # A leader that cannot hand over (no other live, staying voter) is skipped for
        # the next victim rather than blocking the group.
        victims = sorted(gone, key=lambda n: (n == g.leader, v.up(n), n)) or sorted(
            voters,
            key=lambda n: (not v.up(n), v.replicas.get(n, 0), n != g.leader, n),
            reverse=True,
        )
        for n in victims:
            if n == g.leader:
                step = _transfer_away(g, v, f"before removing node {n}'s replica")
                if step is not None:
                    return step
            elif v.quorum_ok(voters - {n}):
                return Remove(g.id, n, "gone" if n in gone else "over-replicated")
        return None
    if kept < g.want:
        target = _best_target(g, v)
        if target is not None:
            why = f"replace node {gone[0]}" if gone else "under-replicated"
            return AddLearner(g.id, target, why)
    return None


def move_step(g: GroupInfo, v: _View, frm: int, to: int) -> Op | None:
    """The next step of moving ``g``'s replica from ``frm`` to ``to`` (None: wait, or
    done): add ``to`` as a learner, promote it once caught up, move leadership off
    ``frm``, remove ``frm``; each under the quorum rule."""
    if not g.leader or g.leader not in g.voters:
        return None
    voters = set(g.voters)
    if to in g.learners:
        if to in g.caught_up and v.quorum_ok(voters | {to}):
            return Promote(g.id, to, f"move from node {frm}")
        return None
    if to not in voters:
        return AddLearner(g.id, to, f"move from node {frm}")
    if frm in g.learners:
        return Remove(g.id, frm, f"move to node {to}")
    if frm in voters:
        if frm == g.leader:
            return _transfer_away(g, v, f"before moving off node {frm}")
        if v.quorum_ok(voters - {frm}):
            return Remove(g.id, frm, f"move to node {to}")
    return None


def _transfer_away(g: GroupInfo, v: _View, why: str) -> Op | None:
    to = [n for n in g.voters if n != g.leader and v.up(n) and not v.gone(n)]
    if not to:
        return None
    best = min(to, key=lambda n: (v.leaders.get(n, 0), n))
    return TransferLeader(g.id, best, why)


def _best_target(g: GroupInfo, v: _View) -> int | None:
    hosts = {*g.voters, *g.learners}
    options = [n for n in v.nodes if n not in hosts and v.usable(n)]
    return min(options, key=v.load) if options else None


def _rebalance_replica(g: GroupInfo, groups: Sequence[GroupInfo], v: _View) -> Op | None:
    usable = [n for n in v.nodes if v.usable(n)]
    if not usable:
        return None
    low = min(usable, key=v.load)
    # The most loaded of this group's voters: only it may give a replica away, and only
    # when it holds 2 or more above the least loaded usable node that lacks this group.
    if low in g.voters:
        return None
    high = max(g.voters, key=v.load)
    if v.replicas.get(high, 0) - v.replicas.get(low, 0) < 2:
        return None
    if v.replicas.get(high, 0) < max(v.replicas.get(n, 0) for n in usable):
        return None  # move from the most loaded node first
    return AddLearner(g.id, low, f"rebalance from node {high}")


def _rebalance_leader(g: GroupInfo, v: _View) -> Op | None:
    mine = v.leaders.get(g.leader, 0)
    others = [n for n in g.voters if n != g.leader and v.usable(n)]
    if not others:
        return None
    best = min(others, key=lambda n: (v.leaders.get(n, 0), n))
    if mine - v.leaders.get(best, 0) < 2:
        return None
    v.leaders[g.leader] = mine - 1
    v.leaders[best] = v.leaders.get(best, 0) + 1
    return TransferLeader(g.id, best, f"leader balance ({mine} on node {g.leader})")


def decommission_blockers(
    groups: Sequence[GroupInfo], nodes: Sequence[NodeInfo], node: int
) -> list[str]:
    """Why decommissioning ``node`` would leave a group without its replicas or without a
    quorum (empty: it may go). Each reason names the group."""
    rest = [n for n in nodes if n.id != node and n.alive and not n.draining]
    out: list[str] = []
    for g in sorted(groups, key=lambda g: g.id):
        if node not in g.voters and node not in g.learners:
            continue
        others = [n for n in g.voters if n != node]
        live = sum(1 for n in others if any(r.id == n for r in rest))
        if len(rest) < g.want:
            out.append(
                f"group {g.id} needs {g.want} replicas on live nodes but only "
                f"{len(rest)} live nodes would remain"
            )
        elif live + max(g.want - len(others), 0) < majority(g.want):
            out.append(
                f"group {g.id} would be left without a quorum: "
                f"{live} of its other voters {sorted(others)} are alive"
            )
    return out
