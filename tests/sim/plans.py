"""Fault plans of the unsharded simulation: which faults exist and when a random
schedule strikes them.

Invariant: a plan is an explicit list of faults drawn only from the ``random.Random``
passed in, so a seed replays it exactly and hypothesis can generate and shrink plans.
Faults of a random plan keep out of a leader-churn episode (``leader_churn``).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

from .cluster import CoreParams
from .network import NetConfig

CHURN_SCHEDULES = 0.35
"""Share of random schedules with a leader-churn episode (``leader_churn``)."""


class FaultKind(enum.Enum):
    PARTITION = "partition"
    """Cut ``side`` off from the rest (a random half, or one node)."""
    ISOLATE_LEADER = "isolate-leader"
    CUT_NEXT_LEADER = "cut-next-leader"
    """Cut off the next newly elected leader ``delay`` steps after it is first seen (its
    first appends, the new term's no-op among them, die with it); cuts queue up."""
    HEAL = "heal"
    CRASH = "crash"
    CRASH_LEADER = "crash-leader"
    CRASH_MID_READY = "crash-mid-ready"
    """Crash ``node`` inside its next Ready, after the persist and before send/apply."""
    CRASH_BEFORE_ADVANCE = "crash-before-advance"
    """Crash ``node`` inside its next Ready, after it applied and before advance."""
    RESTART = "restart"
    RESTART_FRESH = "restart-fresh"
    """Restart rebuilding the state machine from the last snapshot."""
    SNAPSHOT = "snapshot"
    TRANSFER = "transfer"
    """The leader hands leadership to another voter (TimeoutNow)."""
    NET = "net"
    """Switch the network to ``net``."""
    ADD_LEARNER = "add-learner"
    PROMOTE = "promote"
    REMOVE = "remove"
    REPLACE = "replace"
    """Joint consensus: promote a learner and remove a voter (maybe the leader) at once."""
    DEMOTE = "demote"
    """Make a voter a learner (joint or one server at a time, at random)."""


CRASHES = (
    FaultKind.CRASH,
    FaultKind.CRASH_LEADER,
    FaultKind.CRASH_MID_READY,
    FaultKind.CRASH_BEFORE_ADVANCE,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    at: int
    kind: FaultKind
    node: int = 0
    side: frozenset[int] = frozenset()
    net: NetConfig | None = None
    keep: int = 0
    """SNAPSHOT: log entries kept before the snapshot index when compacting."""
    delay: int = 0
    """CUT_NEXT_LEADER: steps between seeing the new leader and cutting it off."""

    def __str__(self) -> str:
        delay = f" delay={self.delay}" if self.delay else ""
        return describe(self.at, self.kind, self.node, self.side, self.net) + delay


def fault_net(rng: random.Random) -> NetConfig:
    """The network a NET fault switches to for a while (shards.py's too)."""
    return NetConfig(
        drop=rng.choice((0.0, 0.05, 0.3)),
        duplicate=rng.choice((0.0, 0.1)),
        max_delay=rng.choice((1, 3, 8)),
    )


def describe(
    at: int, kind: enum.Enum, node: int, side: frozenset[int], net: NetConfig | None
) -> str:
    """A fault as a failure report prints it (shards.py's faults too)."""
    extra = f" node={node}" if node else ""
    if side:
        extra += f" side={sorted(side)}"
    if net is not None:
        extra += f" {net}"
    return f"@{at} {kind.value}{extra}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SimOptions:
    nodes: int = 3
    steps: int = 200
    net: NetConfig = field(default_factory=lambda: NetConfig(drop=0.02, max_delay=3))
    params: CoreParams = field(default_factory=CoreParams)
    propose_prob: float = 0.3
    read_prob: float = 0.1
    tick_prob: float = 0.9
    ready_prob: float = 0.3
    """After each delivered message, handle that node's Ready at once with this chance."""
    membership: bool = False
    churn: bool = False
    """The plan holds a leader-churn episode (``leader_churn``)."""
    liveness_ops: int = 4
    liveness_reads: int = 4


def random_options(rng: random.Random, *, steps: int, membership: bool) -> SimOptions:
    net = NetConfig(
        drop=rng.choice((0.0, 0.02, 0.1)),
        duplicate=rng.choice((0.0, 0.0, 0.05)),
        max_delay=rng.choice((1, 2, 3, 5)),
    )
    churn = rng.random() < CHURN_SCHEDULES
    params = CoreParams(
        election_tick=rng.choice((5, 10)),
        pre_vote=rng.random() < 0.75,
        check_quorum=rng.random() < 0.75,
        # Churn schedules mostly split a tail over several appends, so a new leader's
        # no-op trails the older entries it replicates.
        max_size_per_msg=64 if churn and rng.random() < 0.75 else rng.choice((64, 256, 1 << 20)),
        max_inflight_msgs=rng.choice((1, 4, 256)),
    )
    return SimOptions(
        nodes=rng.choice((3, 3, 3, 3, 5) if churn else (3, 3, 5)),
        steps=steps,
        net=net,
        params=params,
        propose_prob=rng.choice((0.3, 0.6) if churn else (0.1, 0.3, 0.6)),
        membership=membership and rng.random() < 0.5,
        churn=churn,
    )


def leader_churn(rng: random.Random, opts: SimOptions) -> list[Fault]:
    """Cut off whoever leads, then each newly elected leader in turn (cutting one off
    heals the previous cut), then heal.

    Each cut-off leader keeps the entries it took since its last commit (an uncommitted
    tail of its term); a leader cut at once has written its term's no-op at indexes the
    others lack; a leader with an older tail that comes back may win, replicate that tail
    for a few round trips and be cut in turn, and the one with the newer no-op may then
    win over the nodes that took the older tail. That is Figure 8 of the Raft paper
    (section 5.4.2): only a core that commits an earlier term's entries by counting
    replicas loses a committed entry in it. Random faults alone reached it at 1 of 3000
    default seeds; with this episode in a third of the schedules, at 110 of 3000 (FINDINGS.md).
    """
    e = opts.params.election_tick
    t = rng.randint(5, max(6, opts.steps // 2))
    out = [Fault(at=t, kind=FaultKind.ISOLATE_LEADER, side=frozenset({1}))]
    cuts = rng.randint(3, 7)
    for i in range(cuts):
        # Alternate: cut one leader before its no-op spreads, let the next one replicate
        # an older tail for a few round trips.
        delay = rng.randint(2, 4 * opts.net.max_delay + 4) if i % 2 else 0
        out.append(Fault(at=t, kind=FaultKind.CUT_NEXT_LEADER, delay=delay))
    out.append(Fault(at=t + (cuts + 1) * 3 * e, kind=FaultKind.HEAL))
    return out


def random_plan(rng: random.Random, opts: SimOptions) -> list[Fault]:
    n, steps = opts.nodes, opts.steps
    ids = list(range(1, n + 1))
    plan: list[Fault] = leader_churn(rng, opts) if opts.churn else []
    # Other faults keep out of the churn episode (a heal or restart inside it would end
    # the rotation it relies on): those that would start in it start after it, those
    # that would end in it (a heal, a restart) end after it.
    lo, hi = (plan[0].at - 20, plan[-1].at) if plan else (steps, steps)

    def outside(at: int) -> int:
        return hi + 1 if lo <= at <= hi else at

    kinds = [
        FaultKind.PARTITION,
        FaultKind.ISOLATE_LEADER,
        FaultKind.CRASH,
        FaultKind.CRASH_LEADER,
        FaultKind.CRASH_MID_READY,
        FaultKind.CRASH_BEFORE_ADVANCE,
        FaultKind.SNAPSHOT,
        FaultKind.NET,
        FaultKind.TRANSFER,
        FaultKind.ADD_LEARNER,
        FaultKind.PROMOTE,
        FaultKind.REMOVE,
        FaultKind.REPLACE,
        FaultKind.DEMOTE,
    ]
    membership = [2, 2, 1, 2, 1] if opts.membership else [0] * 5
    weights = [4, 2, 3, 2, 2, 1, 5, 1, 1, *membership]
    t = 0
    while True:
        t = outside(t + rng.randint(2, 20))
        if t >= steps:
            return sorted(plan, key=lambda f: f.at)
        kind = rng.choices(kinds, weights)[0]
        node = rng.choice(ids)
        if kind in (FaultKind.PARTITION, FaultKind.ISOLATE_LEADER):
            side = frozenset(rng.sample(ids, rng.randint(1, n // 2)))
            plan.append(Fault(at=t, kind=kind, side=side))
            plan.append(Fault(at=outside(t + rng.randint(5, 60)), kind=FaultKind.HEAL))
        elif kind in CRASHES:
            plan.append(Fault(at=t, kind=kind, node=node))
            back = FaultKind.RESTART if rng.random() < 0.7 else FaultKind.RESTART_FRESH
            # RESTART of CRASH_LEADER restarts every down node (the leader is known only then).
            plan.append(Fault(at=outside(t + rng.randint(1, 40)), kind=back, node=node))
        elif kind == FaultKind.SNAPSHOT:
            plan.append(Fault(at=t, kind=kind, node=node, keep=rng.choice((0, 0, 2, 5))))
        elif kind == FaultKind.NET:
            net = fault_net(rng)
            plan.append(Fault(at=t, kind=kind, net=net))
            plan.append(Fault(at=t + rng.randint(5, 40), kind=kind, net=opts.net))
        else:
            plan.append(Fault(at=t, kind=kind, node=node))
