"""Sharded schedules: the seeded simulation with splits and moves among its faults.

Invariant: ``run_shard_schedule(kind, seed, ...)`` is a pure function of its arguments
(every random choice comes from ``random.Random(seed)``), so a printed seed replays a
failure exactly. Faults: partitions, crashes (also right after a persist, before its
messages leave), log compaction, network changes, leader transfers, and the shard
commands: SPLIT (an admin Split entry in a shard's log, at a key inside its range, with
the epoch its leader holds) and MOVE (add a learner, wait until it caught up, promote,
move leadership off the source, remove the source: the placement loop's steps); replicas
removed by moves are destroyed by the zombie rule. Writers put unique values to random
keys, routed with a possibly stale copy of the shard map, and retry with the same
session seq after a stale route (WRONG_SHARD at apply), a lost leadership or a crash.

Liveness (after the faults): the network is made perfect and every node restarted; every
shard must elect a leader and all its members converge, and every write issued must be
acknowledged, within CONVERGE_BOUND_E * election_tick ticks. Then every member's data is
compared with the KV model (shard_checkers.py).
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from dataclasses import dataclass, field

from kvstore.consensus.types import ConsensusError
from kvstore.node.zombies import zombies
from kvstore.shard import commands as shard_cmds
from kvstore.shard.split import SplitError, check_split_key

from .checkers import SafetyViolation
from .cluster import CoreParams, load_core
from .network import PERFECT, NetConfig, Network
from .plans import describe, fault_net
from .schedule import SimFailure, faults_by_step, run_guarded
from .shard_actors import KEYS, Merger, Mover, Writers
from .shard_cluster import ShardCluster, StorageView

CONVERGE_BOUND_E = 120
MAX_GROUPS = 8
SPLIT_KEYS = sorted({k[:1] for k in KEYS} | set(KEYS))
INITIAL_SPLITS = {1: [], 2: [b"e"], 3: [b"c", b"f"]}


class ShardFault(enum.Enum):
    PARTITION = "partition"
    HEAL = "heal"
    CRASH = "crash"
    CRASH_AFTER_PERSIST = "crash-after-persist"
    """Crash ``node`` in its next persist round, after the write, before sending."""
    RESTART = "restart"
    SNAPSHOT = "snapshot"
    """Compact a random group's log on ``node`` (lagging replicas then need a snapshot)."""
    NET = "net"
    TRANSFER = "transfer"
    SPLIT = "split"
    MOVE = "move"
    MERGE = "merge"


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    at: int
    kind: ShardFault
    node: int = 0
    side: frozenset[int] = frozenset()
    net: NetConfig | None = None
    keep: int = 0

    def __str__(self) -> str:
        return describe(self.at, self.kind, self.node, self.side, self.net)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardOptions:
    nodes: int = 4
    shards: int = 2
    replicas: int = 3
    steps: int = 150
    net: NetConfig = field(default_factory=lambda: NetConfig(drop=0.02, max_delay=3))
    params: CoreParams = field(default_factory=CoreParams)
    write_prob: float = 0.6
    tick_prob: float = 0.9
    route_check: float = 0.5
    """Chance that a leader checks the key against its range before proposing (the
    node's router); otherwise only the check at apply fences a stale route."""


def random_options(rng: random.Random, steps: int) -> ShardOptions:
    return ShardOptions(
        nodes=rng.choice((3, 4, 5)),
        shards=rng.choice((1, 2, 3)),
        steps=steps,
        net=NetConfig(
            drop=rng.choice((0.0, 0.02, 0.1)),
            duplicate=rng.choice((0.0, 0.05)),
            max_delay=rng.choice((1, 2, 3)),
        ),
        params=CoreParams(
            election_tick=rng.choice((5, 10)),
            pre_vote=rng.random() < 0.75,
            check_quorum=rng.random() < 0.75,
            max_size_per_msg=rng.choice((256, 1 << 20)),
            max_inflight_msgs=rng.choice((1, 4, 256)),
        ),
        write_prob=rng.choice((0.3, 0.6, 0.9)),
        route_check=rng.choice((0.0, 0.5, 1.0)),
    )


def random_plan(rng: random.Random, opts: ShardOptions) -> list[Fault]:
    ids = list(range(1, opts.nodes + 1))
    kinds = list(ShardFault)
    weights = {
        ShardFault.PARTITION: 3,
        ShardFault.CRASH: 3,
        ShardFault.CRASH_AFTER_PERSIST: 1,
        ShardFault.SNAPSHOT: 4,
        ShardFault.NET: 1,
        ShardFault.TRANSFER: 2,
        ShardFault.SPLIT: 5,
        ShardFault.MOVE: 3,
        ShardFault.MERGE: 4,
    }
    plan: list[Fault] = []
    t = 0
    while True:
        t += rng.randint(2, 15)
        if t >= opts.steps:
            return sorted(plan, key=lambda f: f.at)
        kind = rng.choices(kinds, [weights.get(k, 0) for k in kinds])[0]
        node = rng.choice(ids)
        if kind == ShardFault.PARTITION:
            side = frozenset(rng.sample(ids, rng.randint(1, len(ids) // 2)))
            plan.append(Fault(at=t, kind=kind, side=side))
            plan.append(Fault(at=t + rng.randint(5, 60), kind=ShardFault.HEAL))
        elif kind in (ShardFault.CRASH, ShardFault.CRASH_AFTER_PERSIST):
            plan.append(Fault(at=t, kind=kind, node=node))
            plan.append(Fault(at=t + rng.randint(1, 40), kind=ShardFault.RESTART, node=node))
        elif kind == ShardFault.SNAPSHOT:
            plan.append(Fault(at=t, kind=kind, node=node, keep=rng.choice((0, 0, 2, 5))))
        elif kind == ShardFault.NET:
            net = fault_net(rng)
            plan.append(Fault(at=t, kind=kind, net=net))
            plan.append(Fault(at=t + rng.randint(5, 40), kind=kind, net=opts.net))
        else:
            plan.append(Fault(at=t, kind=kind, node=node))


# -- running ---------------------------------------------------------------------------
@dataclass(slots=True)
class ShardResult:
    seed: int
    steps: int
    heal_ticks: int
    checks: int
    stats: Counter[str]


class ShardRun:
    def __init__(
        self, kind: str, seed: int, opts: ShardOptions, plan: list[Fault], *, wait_all: bool = True
    ) -> None:
        loaded = load_core(kind)
        if loaded is None:
            raise LookupError(f"consensus core {kind!r} does not import")
        factory, traits = loaded
        self.kind, self.seed, self.opts, self.plan = kind, seed, opts, plan
        self.rng = random.Random(seed ^ 0x5A4D)
        self.net = Network(random.Random(self.rng.getrandbits(64)), opts.net)
        self.c = ShardCluster(
            factory=factory,
            traits=traits,
            nodes=opts.nodes,
            shards=opts.shards,
            replicas=opts.replicas,
            split_keys=INITIAL_SPLITS[opts.shards],
            rng=random.Random(self.rng.getrandbits(64)),
            net=self.net,
            params=opts.params,
        )
        self.writers = Writers(self.c, random.Random(self.rng.getrandbits(64)), opts.route_check)
        self.mover = Mover(self.c, random.Random(self.rng.getrandbits(64)))
        self.merger = Merger(self.c, random.Random(self.rng.getrandbits(64)), wait_all=wait_all)
        self.crash_after_persist: set[int] = set()

    def run(self) -> ShardResult:
        try:
            return run_guarded(self._run, self._failure)
        finally:
            self.c.close()

    def _failure(self, reason: str) -> SimFailure:
        return SimFailure(f"sharded {self.kind}", self.seed, reason, list(self.c.trace), self.plan)

    def _run(self) -> ShardResult:
        by_step = faults_by_step(self.plan)
        c, opts = self.c, self.opts
        for step in range(opts.steps):
            c.now = step
            for f in by_step.get(step, ()):
                self.apply_fault(f)
            self.step(opts.tick_prob)
            if self.rng.random() < opts.write_prob:
                self.writers.issue()
            self.drive()
            c.settle(self.crash_after_persist)
            if step % 10 == 9:
                self.reap()
            if step % 25 == 24:
                self.full_log_matching()
        heal = self.heal_and_check()
        self.full_log_matching()
        stats = c.stats + self.net.stats + self.writers.stats + self.mover.stats + self.merger.stats
        stats["resurrected_older"] += c.ranges.resurrected_older
        checks = sum(ck.checks for ck in c.checkers.values())
        checks += c.ranges.checks + c.kv.checks + c.merges.checks
        return ShardResult(self.seed, c.now + 1, heal, checks, stats)

    def drive(self) -> None:
        self.writers.drive()
        self.mover.drive(self.merger.busy())
        self.merger.drive()

    def step(self, tick_prob: float) -> None:
        c = self.c
        for node in c.up_nodes():
            for core in list(node.cores.values()):
                if tick_prob >= 1 or self.rng.random() < tick_prob:
                    core.tick()
        c.deliver_due()

    def reap(self) -> None:
        """The zombie reaper of every live node (kvstore/node/zombies.py's rule)."""
        c = self.c
        for node in c.up_nodes():
            for g in zombies(node.descriptors(), c.ranges.map, node.id):
                c.destroy(node, g)

    def full_log_matching(self) -> None:
        c = self.c
        for g, ck in c.checkers.items():
            logs = {n.id: StorageView(n.storage.group(g)) for n in c.nodes.values() if g in n.cores}
            ck.full_log_matching(logs)  # type: ignore[arg-type]

    def apply_fault(self, f: Fault) -> None:
        c = self.c
        c.note(f"fault {f}")
        k = f.kind
        ids = sorted(c.nodes)
        if f.node and f.node not in c.nodes:
            return
        if k == ShardFault.PARTITION:
            self.net.partition(f.side, ids)
        elif k == ShardFault.HEAL:
            self.net.heal()
        elif k == ShardFault.CRASH:
            c.crash(f.node)
        elif k == ShardFault.CRASH_AFTER_PERSIST:
            self.crash_after_persist.add(f.node)
        elif k == ShardFault.RESTART:
            self.crash_after_persist.discard(f.node)
            for node in list(c.nodes.values()):
                if not node.up:
                    c.restart(node.id)
        elif k == ShardFault.SNAPSHOT:
            node = c.nodes[f.node]
            if node.up and node.cores:
                c.snapshot_and_compact(f.node, self.rng.choice(sorted(node.cores)), f.keep)
        elif k == ShardFault.NET:
            assert f.net is not None
            self.net.config = f.net
        elif k == ShardFault.TRANSFER:
            self.transfer()
        elif k == ShardFault.SPLIT:
            self.split()
        elif k == ShardFault.MOVE:
            self.mover.start(self.merger.busy())
        elif k == ShardFault.MERGE:
            self.merger.start(self.mover.busy())

    def transfer(self) -> None:
        c = self.c
        g = self.rng.choice(c.groups())
        leader = c.leader(g)
        if not leader:
            return
        core = c.nodes[leader].cores[g]
        others = sorted(core.status().conf_state.voters - {leader})
        if not others:
            return
        try:
            core.transfer_leadership(self.rng.choice(others))
        except (ConsensusError, NotImplementedError):
            c.stats["transfer_refused"] += 1
            return
        c.stats["transfers"] += 1

    def split(self) -> None:
        c = self.c
        if len(c.groups()) >= MAX_GROUPS:
            return
        g = self.rng.choice(c.groups())
        leader = c.leader(g)
        if not leader:
            return
        node = c.nodes[leader]
        d = node.storage.group(g).view.shard
        if d is None:
            return
        inside = []
        for k in SPLIT_KEYS:
            try:
                check_split_key(d, k)
            except SplitError:
                continue
            inside.append(k)
        if not inside:
            return
        at = self.rng.choice(inside)
        new_id = c.next_id
        c.next_id += 1
        data = shard_cmds.encode(shard_cmds.Split(new_id, at, d.epoch))
        try:
            node.cores[g].propose(data)
        except ConsensusError:
            return
        c.stats["splits_proposed"] += 1
        c.note(f"split {d.describe()} at {at!r} -> new shard {new_id}")

    # -- liveness -------------------------------------------------------------------------
    def heal_and_check(self) -> int:
        c = self.c
        self.net.heal()
        self.net.config = PERFECT
        self.crash_after_persist.clear()
        for node in c.nodes.values():
            if not node.up:
                c.restart(node.id)
        c.note("healed: perfect network, every node up")
        start = c.now
        bound = CONVERGE_BOUND_E * self.opts.params.election_tick
        while True:
            c.now += 1
            t = c.now - start
            self.step(1.0)
            self.drive()
            c.settle()
            if t % 10 == 0:
                self.reap()
            idle = not (self.writers.pending or self.mover.moves or self.merger.merges)
            if idle and self._converged():
                return t
            if t > bound:
                state = {
                    g: {
                        n.id: n.storage.group(g).view.applied
                        for n in c.nodes.values()
                        if g in n.cores
                    }
                    for g in c.groups()
                }
                raise self._failure(
                    f"liveness: not converged {t} ticks after healing (bound "
                    f"{CONVERGE_BOUND_E}*election_tick={bound}): {len(self.writers.pending)} "
                    f"writes pending, moves {self.mover.moves}, merges {self.merger.merges}, "
                    f"applied per group {state}"
                )

    def _converged(self) -> bool:
        c = self.c
        for g in c.groups():
            leader = c.leader(g)
            if not leader:
                return False
            lnode = c.nodes[leader]
            s = lnode.cores[g].status()
            members = s.conf_state.voters | s.conf_state.learners
            for nid in members:
                n = c.nodes[nid]
                if g not in n.cores or n.storage.group(g).view.applied != s.commit:
                    return False
                if n.digest[g] != lnode.digest[g]:
                    raise SafetyViolation(f"group {g}: nodes {nid} and {leader} converged apart")
        for g in c.groups():
            d = c.ranges.map.get(g)
            assert d is not None
            for nid in d.replicas:
                n = c.nodes[nid]
                held = n.storage.group(g).view.shard
                if held != d:
                    return False
                c.kv.check_final(nid, d, n.storage.kv(g).scan(d.start, d.end))
        return True


def run_shard_schedule(
    kind: str,
    seed: int,
    *,
    steps: int = 150,
    opts: ShardOptions | None = None,
    plan: list[Fault] | None = None,
    wait_all: bool = True,
) -> ShardResult:
    """Run one sharded schedule; raises SimFailure naming the seed. ``wait_all=False``:
    the broken merge coordinator (test_shard_broken.py)."""
    rng = random.Random(seed)
    if opts is None:
        opts = random_options(rng, steps)
    if plan is None:
        plan = random_plan(rng, opts)
    return ShardRun(kind, seed, opts, plan, wait_all=wait_all).run()
