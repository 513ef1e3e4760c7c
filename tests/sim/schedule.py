"""The run loop of a schedule: one schedule = options + a plan of faults (plans.py) + a seed.

Invariant: ``run_schedule(kind, seed, ...)`` is a pure function of its arguments (every
random choice is drawn from ``random.Random(seed)``), so a printed seed replays a failure
exactly.

Liveness (checked after the faults): the network is made perfect (no loss, one-step
delay), every member is restarted and every node ticks once a step. Let E be the election
timeout in ticks and B the backlog at healing (highest last index minus lowest applied
index among the members: entries some member may still have to receive, or a new Paxos
leader to re-accept, one message each when the window is one entry). Then:
- a leader is elected within LEADER_BOUND_E * E ticks;
- every client operation issued after healing is applied within
  OP_BOUND_E * E + BACKLOG_TICKS * B ticks of its issue (re-proposed if its leader lost
  office before it committed);
- every strong read (read_index) issued after healing, and every one made at a leader
  before healing that is still pending there, is confirmed within the same bound
  (re-issued when it went stale; reads.py states the rule);
- all members converge on one applied state holding every acknowledged value within
  CONVERGE_BOUND_E * E + BACKLOG_TICKS * B ticks of healing.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from kvstore.consensus.types import ConfChange, ConfChangeType, ConsensusError, Role

from .checkers import Checker, SafetyViolation
from .cluster import Attempt, Client, Cluster, CrashPoint, load_core
from .network import PERFECT, Network
from .plans import CRASHES, Fault, FaultKind, SimOptions, random_options, random_plan
from .reads import ReadAttempt, Reads

LEADER_BOUND_E = 30
OP_BOUND_E = 45
CONVERGE_BOUND_E = 80
BACKLOG_TICKS = 4
"""Ticks allowed per backlog entry: two round trips of one-step messages."""
MAX_NODES = 7


class _Timed(Protocol):
    @property
    def at(self) -> int: ...


@dataclass(slots=True)
class SimResult:
    seed: int
    steps: int
    heal_ticks: int
    """Ticks from healing until every member converged."""
    leader_ticks: int
    """Ticks from healing until a leader was seen."""
    op_ticks: int
    """The slowest post-healing operation, issue to commit, in ticks."""
    checks: int
    stats: Counter[str]


class SimFailure(AssertionError):
    def __init__(
        self, kind: str, seed: int, reason: str, trace: list[str], plan: str | Sequence[object]
    ) -> None:
        """``plan``: the faults (printed one after the other), or their text."""
        self.kind, self.seed, self.reason = kind, seed, reason
        if not isinstance(plan, str):
            plan = "; ".join(str(f) for f in plan) or "(none)"
        lines = [
            f"{kind} simulation seed {seed} failed: {reason}",
            f"plan: {plan}",
            "last events:",
            *trace,
        ]
        super().__init__("\n".join(lines))


R = TypeVar("R")
F = TypeVar("F", bound=_Timed)


def faults_by_step(plan: Sequence[F]) -> defaultdict[int, list[F]]:
    by_step: defaultdict[int, list[F]] = defaultdict(list)
    for f in plan:
        by_step[f.at].append(f)
    return by_step


def run_guarded(run: Callable[[], R], failure: Callable[[str], SimFailure]) -> R:
    """``run()``, with a safety violation or an unexpected exception turned into the
    SimFailure ``failure`` makes of it (seed, plan, last events: a replayable report)."""
    try:
        return run()
    except SafetyViolation as e:
        raise failure(str(e)) from e
    except SimFailure:
        raise
    except Exception as e:
        raise failure(f"exception {type(e).__name__}: {e}") from e


# -- running -------------------------------------------------------------------------
class Run:
    def __init__(self, kind: str, seed: int, opts: SimOptions, plan: list[Fault]) -> None:
        loaded = load_core(kind)
        if loaded is None:
            raise LookupError(f"consensus core {kind!r} does not import")
        factory, traits = loaded
        self.kind, self.seed, self.opts, self.plan = kind, seed, opts, plan
        self.rng = random.Random(seed ^ 0x5EED)
        self.checker = Checker(traits)
        self.net = Network(random.Random(self.rng.getrandbits(64)), opts.net)
        self.cluster = Cluster(
            factory=factory,
            checker=self.checker,
            n=opts.nodes,
            rng=random.Random(self.rng.getrandbits(64)),
            net=self.net,
            params=opts.params,
        )
        self.client = Client(self.cluster, random.Random(self.rng.getrandbits(64)), b"v")
        self.reads = Reads(self.cluster, self.checker, random.Random(self.rng.getrandbits(64)))
        self.mid_ready_crash: dict[int, CrashPoint] = {}
        self.cuts: list[int] = []
        """Queued CUT_NEXT_LEADER delays; ``cut_term``: the term of the last leader cut."""
        self.cut_term = 0
        self.cut_at: int | None = None
        self.membership_supported = True

    def run(self) -> SimResult:
        return run_guarded(self._run, self._failure)

    def _failure(self, reason: str) -> SimFailure:
        return SimFailure(self.kind, self.seed, reason, list(self.cluster.trace), self.plan)

    def _run(self) -> SimResult:
        by_step = faults_by_step(self.plan)
        c, opts = self.cluster, self.opts
        for step in range(opts.steps):
            c.now = step
            late: list[Fault] = []
            for f in by_step.get(step, ()):
                # Half the crashes strike after this step's deliveries and before their
                # Readies: the cores then lose state they changed but never handed out.
                if f.kind in CRASHES and self.rng.random() < 0.5:
                    late.append(f)
                else:
                    self.apply_fault(f)
            self.step(opts.tick_prob)
            for f in late:
                self.apply_fault(f)
            if self.rng.random() < opts.propose_prob:
                self.client.propose()
            if self.rng.random() < opts.read_prob:
                self.reads.issue_random()
            self.settle()
            # After the Readies: a leader elected in this step is cut off before any of
            # its messages (which leave with the next step's deliveries) arrive.
            self._maybe_cut_leader()
            if step % 25 == 24:
                self.checker.full_log_matching({n.id: n.storage for n in c.nodes.values()})
        heal_ticks, leader_ticks, op_ticks = self.heal_and_check_liveness()
        self.checker.full_log_matching({n.id: n.storage for n in c.nodes.values()})
        stats = c.stats + self.net.stats + self.client.stats + self.reads.stats
        return SimResult(
            self.seed, c.now + 1, heal_ticks, leader_ticks, op_ticks, self.checker.checks, stats
        )

    def step(self, tick_prob: float) -> None:
        c = self.cluster
        for node in c.up_nodes():
            if tick_prob >= 1 or self.rng.random() < tick_prob:
                c.tick(node)
        c.deliver_due(self.opts.ready_prob)

    def settle(self) -> None:
        c = self.cluster
        nodes = c.up_nodes()
        self.rng.shuffle(nodes)
        for node in nodes:
            point = self.mid_ready_crash.get(node.id)
            if point is not None and node.core is not None and node.core.has_ready():
                del self.mid_ready_crash[node.id]
                c.handle_ready(node, crash_at=point)
            else:
                c.handle_ready(node)
        c.check_step()

    def apply_fault(self, f: Fault) -> None:
        c = self.cluster
        c.note(f"fault {f}")
        k = f.kind
        ids = sorted(c.nodes)
        if f.node and f.node not in c.nodes:
            return  # generated plans may name nodes this cluster does not have
        if k == FaultKind.PARTITION:
            self.net.partition(f.side, ids)
        elif k == FaultKind.ISOLATE_LEADER:
            leader = c.leader()
            self.net.partition({leader} if leader else f.side, ids)
        elif k == FaultKind.HEAL:
            self.net.heal()
            self.cuts.clear()
            self.cut_at = None
        elif k == FaultKind.CUT_NEXT_LEADER:
            if not self.cuts:
                self.cut_term = self._leader_term()
            self.cuts.append(f.delay)
        elif k == FaultKind.CRASH:
            c.crash(f.node)
        elif k == FaultKind.CRASH_LEADER:
            victim = c.leader() or f.node
            if victim:
                c.crash(victim)
        elif k == FaultKind.CRASH_MID_READY:
            self.mid_ready_crash[f.node] = CrashPoint.AFTER_PERSIST
        elif k == FaultKind.CRASH_BEFORE_ADVANCE:
            self.mid_ready_crash[f.node] = CrashPoint.BEFORE_ADVANCE
        elif k in (FaultKind.RESTART, FaultKind.RESTART_FRESH):
            self.mid_ready_crash.pop(f.node, None)
            for node in list(c.nodes.values()):
                if not node.up:
                    c.restart(node.id, keep_state_machine=k == FaultKind.RESTART)
        elif k == FaultKind.SNAPSHOT:
            if f.node:
                c.snapshot_and_compact(f.node, f.keep)
        elif k == FaultKind.NET:
            assert f.net is not None
            self.net.config = f.net
        elif k == FaultKind.TRANSFER:
            self.transfer()
        elif self.membership_supported:
            self.change_membership(k)

    def _leader_term(self) -> int:
        leader = self.cluster.leader()
        core = self.cluster.nodes[leader].core if leader else None
        return core.status().term if core is not None else 0

    def _maybe_cut_leader(self) -> None:
        """CUT_NEXT_LEADER: cut off a leader newer than the last one cut, once its delay
        has passed since it was first seen."""
        if not self.cuts:
            return
        c = self.cluster
        leader = c.leader()
        core = c.nodes[leader].core if leader else None
        if core is None:
            return
        term = core.status().term
        if term <= self.cut_term:
            return
        if self.cut_at is None:
            self.cut_at = c.now + self.cuts[0]
        if c.now >= self.cut_at:
            self.cuts.pop(0)
            self.cut_at = None
            self.cut_term = term
            c.note(f"cut off new leader {leader} of term {term}")
            self.net.partition({leader}, sorted(c.nodes))

    def transfer(self) -> None:
        c = self.cluster
        leader = c.leader()
        core = c.nodes[leader].core if leader else None
        if core is None:
            return
        others = sorted(core.status().conf_state.voters - {leader})
        if not others:
            return
        to = self.rng.choice(others)
        c.note(f"transfer leadership {leader} -> {to}")
        try:
            core.transfer_leadership(to)
        except (ConsensusError, NotImplementedError):
            self.cluster.stats["transfer_refused"] += 1
            return
        self.cluster.stats["transfers"] += 1

    def change_membership(self, k: FaultKind) -> None:
        c = self.cluster
        leader = c.leader()
        if not leader:
            return
        core = c.nodes[leader].core
        assert core is not None
        cs = core.status().conf_state
        self.client.hint = leader
        change: ConfChange | None = None
        if k == FaultKind.ADD_LEARNER and len(c.nodes) < MAX_NODES:
            new_id = max(c.nodes) + 1
            c.add_node(new_id)
            change = ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=new_id)
        elif k == FaultKind.PROMOTE and cs.learners:
            change = ConfChange(type=ConfChangeType.ADD_NODE, node_id=min(cs.learners))
        elif k == FaultKind.REMOVE and len(cs.voters) > 3:
            victim = self.rng.choice(sorted(cs.voters))
            change = ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=victim)
        elif k == FaultKind.REPLACE and cs.learners - cs.voters_outgoing:
            new = min(cs.learners - cs.voters_outgoing)
            old = self.rng.choice(sorted(cs.voters))
            change = ConfChange(
                type=ConfChangeType.JOINT,
                changes=(
                    ConfChange(type=ConfChangeType.ADD_NODE, node_id=new),
                    ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=old),
                ),
            )
        elif k == FaultKind.DEMOTE and len(cs.voters) > 3:
            victim = self.rng.choice(sorted(cs.voters))
            change = ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=victim)
            if self.rng.random() < 0.5:
                change = ConfChange(type=ConfChangeType.JOINT, changes=(change,))
        if change is None:
            return
        try:
            if self.client.change(change):
                c.stats[f"{k.value}_proposed"] += 1
        except NotImplementedError:
            self.membership_supported = False

    # -- liveness ----------------------------------------------------------------------
    def heal_and_check_liveness(self) -> tuple[int, int, int]:
        c, checker = self.cluster, self.checker
        e_ticks = self.opts.params.election_tick
        self.net.heal()
        self.net.config = PERFECT
        self.mid_ready_crash.clear()
        members = c.members()
        for nid in sorted(members):
            if nid in c.nodes and not c.nodes[nid].up:
                c.restart(nid)
        up = [c.nodes[i] for i in sorted(members) if i in c.nodes]
        backlog = max(n.storage.last_index() for n in up) - min(n.sm.index for n in up)
        op_bound = OP_BOUND_E * e_ticks + BACKLOG_TICKS * backlog
        converge_bound = CONVERGE_BOUND_E * e_ticks + BACKLOG_TICKS * backlog
        c.note(f"healed: perfect network, all members up, backlog {backlog}")
        self.reads.healed = True
        start = c.now
        leader_at = -1
        ops: list[tuple[int, Attempt | None]] = []  # (issued at, current attempt)
        reads: list[tuple[int, ReadAttempt | None]] = []
        done = issued_ops = slowest = 0
        while True:
            c.now += 1
            t = c.now - start
            self.step(1.0)
            if issued_ops < self.opts.liveness_ops and t % 2 == 0:
                issued_ops += 1
                ops.append((c.now, None))
            # New reads wait until the ones made before healing are answered (or stale):
            # a later read's round would answer them too, hiding a core that never
            # retries a lost round.
            lone = bool(self.reads.pending_at_leader())
            if len(reads) < self.opts.liveness_reads and t % 2 == 1 and not lone:
                reads.append((c.now, None))
            reads = self._drive_reads(reads, t, op_bound)
            still: list[tuple[int, Attempt | None]] = []
            for issued, attempt in ops:
                if attempt is not None and attempt.value in checker.value_index:
                    done += 1
                    slowest = max(slowest, c.now - issued)
                    continue
                if attempt is None or self._stale(attempt):
                    leader = c.leader()
                    if leader:
                        self.client.hint = leader
                    attempt = self.client.propose()
                still.append((issued, attempt))
            ops = still
            self.settle()
            if leader_at < 0 and c.leader():
                leader_at = t
            if leader_at < 0 and t > LEADER_BOUND_E * e_ticks:
                raise self._failure(
                    f"liveness: no leader {t} ticks after healing "
                    f"(bound {LEADER_BOUND_E}*election_tick={LEADER_BOUND_E * e_ticks})"
                )
            for issued, _ in ops:
                if c.now - issued > op_bound:
                    raise self._failure(
                        f"liveness: a proposal issued {c.now - issued} ticks ago, after "
                        f"healing, has not committed (bound {OP_BOUND_E}*election_tick + "
                        f"{BACKLOG_TICKS}*backlog {backlog} = {op_bound})"
                    )
            if (
                done == self.opts.liveness_ops
                and len(reads) == self.opts.liveness_reads
                and all(a is not None and self.reads.confirmed(a) for _, a in reads)
                and not self.reads.pending_at_leader()
                and self._converged()
            ):
                return t, leader_at, slowest
            if t > converge_bound:
                states = {n.id: n.sm.index for n in c.nodes.values()}
                raise self._failure(
                    f"liveness: members {sorted(c.members())} did not converge within "
                    f"{CONVERGE_BOUND_E}*election_tick + {BACKLOG_TICKS}*backlog {backlog} = "
                    f"{converge_bound} ticks of healing (applied: {states})"
                )

    def _drive_reads(
        self, reads: list[tuple[int, ReadAttempt | None]], t: int, bound: int
    ) -> list[tuple[int, ReadAttempt | None]]:
        """Re-issue stale or refused post-healing reads (at the leader, or at a random
        member so forwarding is exercised); fail any read, before or after healing,
        that waits beyond ``bound``."""
        c = self.cluster
        out = []
        for issued, a in reads:
            if a is not None and self.reads.confirmed(a):
                out.append((issued, a))
                continue
            if a is None or self.reads.stale(a):
                a = self.reads.issue_random()
            if c.now - issued > bound:
                raise self._failure(
                    f"liveness: a strong read issued {c.now - issued} ticks ago, after "
                    f"healing, is not confirmed (bound {bound}; last try {a})"
                )
            out.append((issued, a))
        if t > bound:
            pending = self.reads.pending_at_leader()
            if pending:
                raise self._failure(
                    f"liveness: strong read {pending[0]} made at a leader before healing is "
                    f"still pending there {t} ticks after healing (bound {bound}): its "
                    "heartbeat round was lost and never retried"
                )
        return out

    def _stale(self, a: Attempt) -> bool:
        node = self.cluster.nodes[a.node]
        if node.core is None:
            return True
        s = node.core.status()
        return s.role != Role.LEADER or s.term != a.pid.term

    def _converged(self) -> bool:
        c = self.cluster
        members = [c.nodes[i] for i in sorted(c.members()) if i in c.nodes]
        if any(not n.up for n in members):
            return False
        leader = c.leader()
        if not leader:
            return False
        lcore = c.nodes[leader].core
        assert lcore is not None
        commit = lcore.status().commit
        if any(n.sm.index != commit for n in members):
            return False
        self.checker.check_converged({n.id: (n.sm.index, n.sm.digest) for n in members})
        return True


def run_schedule(
    kind: str,
    seed: int,
    *,
    steps: int = 150,
    membership: bool = True,
    opts: SimOptions | None = None,
    plan: list[Fault] | None = None,
) -> SimResult:
    """Run one schedule; raises SimFailure (with the seed and a replay command)."""
    rng = random.Random(seed)
    if opts is None:
        opts = random_options(rng, steps=steps, membership=membership)
    if plan is None:
        plan = random_plan(rng, opts)
    return Run(kind, seed, opts, plan).run()
