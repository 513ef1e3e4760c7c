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

import contextlib
import enum
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    ConsensusError,
    Entry,
    NotLeaderError,
    ProposalId,
    Role,
)
from kvstore.node.zombies import zombies
from kvstore.shard import commands as shard_cmds
from kvstore.shard.shardmap import ShardMap
from kvstore.shard.split import SplitError, check_split_key
from kvstore.statemachine.commands import Put, encode_batch
from kvstore.statemachine.types import ApplyError, ApplyResult

from .checkers import SafetyViolation
from .cluster import CoreParams, load_core
from .network import PERFECT, NetConfig, Network
from .schedule import SimFailure
from .shard_cluster import ShardCluster, StorageView

CONVERGE_BOUND_E = 120
MAX_GROUPS = 8
MAX_PENDING = 6
RETRY_AFTER = 6
"""Steps after which a client may give up waiting on an attempt and send it again."""
MOVE_STEPS = 300
"""A move not done after this many steps is abandoned (the placement loop retries)."""
KEYS = [bytes([a, b]) for a in b"abcdefgh" for b in b"abcd"]
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    at: int
    kind: ShardFault
    node: int = 0
    side: frozenset[int] = frozenset()
    net: NetConfig | None = None
    keep: int = 0

    def __str__(self) -> str:
        extra = f" node={self.node}" if self.node else ""
        if self.side:
            extra += f" side={sorted(self.side)}"
        if self.net is not None:
            extra += f" {self.net}"
        return f"@{self.at} {self.kind.value}{extra}"


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
            net = NetConfig(
                drop=rng.choice((0.0, 0.05, 0.3)),
                duplicate=rng.choice((0.0, 0.1)),
                max_delay=rng.choice((1, 3, 8)),
            )
            plan.append(Fault(at=t, kind=kind, net=net))
            plan.append(Fault(at=t + rng.randint(5, 40), kind=kind, net=opts.net))
        else:
            plan.append(Fault(at=t, kind=kind, node=node))


# -- writers ---------------------------------------------------------------------------
@dataclass(slots=True)
class PendingWrite:
    key: bytes
    value: bytes
    client: int
    seq: int
    issued: int
    data: bytes = b""
    at: tuple[int, int, ProposalId] | None = None
    """(node, group, proposal) of the attempt in flight (the last one: an earlier one
    may still apply, and the session must then answer the later one from its record)."""
    sent: int = 0
    tries: int = 0


class Writers:
    """Clients putting unique values with exactly-once sessions, routed by a cached map."""

    def __init__(self, cluster: ShardCluster, rng: random.Random, opts: ShardOptions) -> None:
        self.c = cluster
        self.rng = rng
        self.opts = opts
        self.cache = ShardMap(list(cluster.ranges.map))
        self.pending: list[PendingWrite] = []
        self.seqs: Counter[int] = Counter()
        self.stamp = 0
        self.stats: Counter[str] = Counter()
        self.slowest = 0
        cluster.on_result.append(self.on_result)

    def issue(self) -> None:
        if len(self.pending) >= MAX_PENDING:
            return
        client = self.rng.randint(1, 3)
        self.seqs[client] += 1
        seq = self.seqs[client]
        key = self.rng.choice(KEYS)
        value = b"%s=%d.%d" % (key, client, seq)
        self.pending.append(PendingWrite(key, value, client, seq, self.c.now))

    def drive(self) -> None:
        for w in self.pending:
            if w.at is None or self._stale(w):
                self._propose(w)
            elif self.c.now - w.sent > RETRY_AFTER and self.rng.random() < 0.2:
                # The client's attempt timed out: retry with the same seq while the first
                # may still apply (the session must make it apply once).
                self.stats["retried_in_flight"] += 1
                self._propose(w)

    def _stale(self, w: PendingWrite) -> bool:
        assert w.at is not None
        node_id, group, pid = w.at
        node = self.c.nodes[node_id]
        core = node.cores.get(group) if node.up else None
        if core is None:
            return True
        s = core.status()
        return s.role != Role.LEADER or s.term != pid.term

    def _propose(self, w: PendingWrite) -> None:
        c = self.c
        w.at = None
        if w.tries and self.rng.random() < 0.5:
            # A retry after a timeout often starts from a fresh map (the client asked
            # around): it may then go to the shard that took the key meanwhile.
            self.cache.report(c.ranges.map, keep_tiling=False)
        d = self.cache.lookup(w.key)
        if d is None:
            self.cache = ShardMap(list(c.ranges.map))
            return
        leader = c.leader(d.id)
        if not leader:
            if self.rng.random() < 0.2:
                self.cache = ShardMap(list(c.ranges.map))
            return
        node = c.nodes[leader]
        if self.rng.random() < self.opts.route_check:
            mine = node.storage.group(d.id).view.shard
            if mine is None or not mine.contains(w.key):
                self.stats["stale_route_at_request"] += 1
                self.cache.report(c.ranges.map, keep_tiling=False)
                return
        self.stamp += 1
        put = Put(w.key, w.value, client_id=w.client, seq=w.seq, incarnation=1)
        w.data = encode_batch([put], time_ms=self.stamp)
        try:
            pid = node.cores[d.id].propose(w.data)
        except NotLeaderError:
            return
        except ConsensusError:
            self.stats["dropped"] += 1
            return
        w.at = (leader, d.id, pid)
        w.sent = self.c.now
        w.tries += 1
        self.stats["proposed"] += 1

    def on_result(self, node: int, group: int, e: Entry, r: ApplyResult) -> None:
        for w in self.pending:
            if w.at is None or w.at[:2] != (node, group) or w.at[2].index != e.index:
                continue
            pid = w.at[2]
            if e.term != pid.term or e.data != w.data:
                w.at = None  # another entry took the slot: propose again
                return
            if r.ok:
                self.pending.remove(w)
                self.stats["acknowledged"] += 1
                if w.tries > 1:
                    self.stats["acknowledged_after_retry"] += 1
                self.slowest = max(self.slowest, self.c.now - w.issued)
            elif r.error == ApplyError.WRONG_SHARD:
                self.stats["wrong_shard_at_apply"] += 1
                self.cache.report(self.c.ranges.map, keep_tiling=False)
                w.at = None
            else:
                raise SafetyViolation(f"write {w.value!r} failed at apply: {r}")
            return


# -- moves -----------------------------------------------------------------------------
@dataclass(slots=True)
class Move:
    group: int
    src: int
    dst: int
    started: int
    phase: str = "learner"
    last_try: int = -100


class Mover:
    """Runs moves the way the placement loop does (kvstore/shard/placement.py)."""

    def __init__(self, cluster: ShardCluster, rng: random.Random) -> None:
        self.c = cluster
        self.rng = rng
        self.moves: list[Move] = []
        self.stats: Counter[str] = Counter()

    def start(self) -> None:
        c = self.c
        busy = {m.group for m in self.moves}
        free = [g for g in c.groups() if g not in busy]
        if not free:
            return
        g = self.rng.choice(free)
        leader = c.leader(g)
        if not leader:
            return
        core = c.nodes[leader].cores[g]
        cs = core.status().conf_state
        members = cs.voters | cs.learners | cs.voters_outgoing
        if cs.learners or cs.voters_outgoing:
            return
        others = sorted(set(c.nodes) - members)
        if not others:
            return
        m = Move(g, self.rng.choice(sorted(cs.voters)), self.rng.choice(others), c.now)
        self.moves.append(m)
        self.stats["moves_started"] += 1
        c.note(f"move group {g}: {m.src} -> {m.dst}")

    def drive(self) -> None:
        for m in list(self.moves):
            if self.c.now - m.started > MOVE_STEPS:
                self.moves.remove(m)
                self.stats["moves_abandoned"] += 1
                continue
            if self._step(m):
                self.moves.remove(m)
                self.stats["moves_done"] += 1
                self.c.note(f"move group {m.group} done: {m.src} -> {m.dst}")

    def _step(self, m: Move) -> bool:
        c = self.c
        leader = c.leader(m.group)
        if not leader:
            return False
        core = c.nodes[leader].cores[m.group]
        s = core.status()
        cs = s.conf_state
        retry = c.now - m.last_try >= 10
        change: ConfChange | None = None
        if m.phase == "learner":
            if m.dst in cs.learners:
                m.phase = "catchup"
            elif m.dst in cs.voters:
                m.phase = "remove"
            elif retry:
                change = ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=m.dst)
        if m.phase == "catchup":
            dst = c.nodes[m.dst]
            glog = dst.storage.group(m.group) if m.group in dst.cores else None
            if glog is not None and glog.view.applied >= s.commit:
                m.phase = "promote"
        if m.phase == "promote":
            if m.dst in cs.voters:
                m.phase = "remove"
            elif m.dst not in cs.learners:
                m.phase = "learner"
            elif retry:
                change = ConfChange(type=ConfChangeType.ADD_NODE, node_id=m.dst)
        if m.phase == "remove":
            if m.src not in cs.voters | cs.learners:
                return True
            if retry and leader == m.src:
                m.last_try = c.now
                with contextlib.suppress(ConsensusError, NotImplementedError):
                    core.transfer_leadership(m.dst)
                return False
            if retry:
                change = ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=m.src)
        if change is not None:
            m.last_try = c.now
            try:
                core.propose_conf_change(change)
                self.stats[f"{change.type.name.lower()}_proposed"] += 1
            except (ConsensusError, NotImplementedError):
                pass
        return False


# -- running ---------------------------------------------------------------------------
@dataclass(slots=True)
class ShardResult:
    seed: int
    steps: int
    heal_ticks: int
    checks: int
    stats: Counter[str]


class ShardRun:
    def __init__(self, kind: str, seed: int, opts: ShardOptions, plan: list[Fault]) -> None:
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
        self.writers = Writers(self.c, random.Random(self.rng.getrandbits(64)), opts)
        self.mover = Mover(self.c, random.Random(self.rng.getrandbits(64)))
        self.crash_after_persist: set[int] = set()

    def run(self) -> ShardResult:
        try:
            return self._run()
        except SafetyViolation as e:
            raise self._failure(str(e)) from e
        except SimFailure:
            raise
        except Exception as e:
            raise self._failure(f"exception {type(e).__name__}: {e}") from e
        finally:
            self.c.close()

    def _failure(self, reason: str) -> SimFailure:
        plan = "; ".join(str(f) for f in self.plan) or "(none)"
        return SimFailure(f"sharded {self.kind}", self.seed, reason, list(self.c.trace), plan)

    def _run(self) -> ShardResult:
        by_step: defaultdict[int, list[Fault]] = defaultdict(list)
        for f in self.plan:
            by_step[f.at].append(f)
        c, opts = self.c, self.opts
        for step in range(opts.steps):
            c.now = step
            for f in by_step.get(step, ()):
                self.apply_fault(f)
            self.step(opts.tick_prob)
            if self.rng.random() < opts.write_prob:
                self.writers.issue()
            self.writers.drive()
            self.mover.drive()
            c.settle(self.crash_after_persist)
            if step % 10 == 9:
                self.reap()
            if step % 25 == 24:
                self.full_log_matching()
        heal = self.heal_and_check()
        self.full_log_matching()
        stats = c.stats + self.net.stats + self.writers.stats + self.mover.stats
        stats["resurrected_older"] += c.ranges.resurrected_older
        checks = sum(ck.checks for ck in c.checkers.values()) + c.ranges.checks + c.kv.checks
        return ShardResult(self.seed, c.now + 1, heal, checks, stats)

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
            self.mover.start()

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
            self.writers.drive()
            self.mover.drive()
            c.settle()
            if t % 10 == 0:
                self.reap()
            if not self.writers.pending and not self.mover.moves and self._converged():
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
                    f"writes pending, moves {self.mover.moves}, applied per group {state}"
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
) -> ShardResult:
    """Run one sharded schedule; raises SimFailure naming the seed."""
    rng = random.Random(seed)
    if opts is None:
        opts = random_options(rng, steps)
    if plan is None:
        plan = random_plan(rng, opts)
    return ShardRun(kind, seed, opts, plan).run()
