"""A simulated cluster: N cores, each over its own MemoryStorage, each node running the
node's own replica loop (kvstore/node/replica.py) over an in-memory twin of its I/O.

Rules this module keeps: every Ready goes through ``ReplicaLoop`` exactly as on a real
node (``begin``: conf changes into the core and the leader's early sends; the persist;
``finish``: the other sends and the answers; ``advance``), so the simulation checks the
production Ready handling, not a copy of it. Only the I/O is the simulation's: ``_persist``
is the one storage transaction (save the snapshot, entries and hard state to the node's
MemoryStorage, apply the committed entries to the state machine, record the membership),
the network is ``Network``, the clock is the step counter. MemoryStorage is the disk: a
crash throws away the core (its volatile state, unsent messages) and a restart builds a
new core from the storage. The state machine (applied index, a digest of the applied
history, membership) is durable and applied in the persist's transaction, as in the LMDB
design; a restart may also rebuild it from the last snapshot instead.
"""

from __future__ import annotations

import enum
import importlib
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from kvstore.consensus.types import (
    ConfChange,
    Config,
    ConsensusError,
    Core,
    LogStorage,
    NotLeaderError,
    ProposalDroppedError,
    ProposalId,
    Role,
    Status,
)
from kvstore.node.pending import GroupState
from kvstore.node.replica import ReplicaLoop

from .checkers import (
    PAXOS_TRAITS,
    RAFT_TRAITS,
    Checker,
    Traits,
    decode_image,
    encode_image,
)
from .network import Network
from .twin import METRICS, Clock, SimStorage, StateMachine, StorageView, Twin, sender

CoreFactory = Callable[[Config, LogStorage], Core]

CORE_MODULES = {
    "raft": ("kvstore.consensus.raft", "RawNode", RAFT_TRAITS),
    "paxos": ("kvstore.consensus.paxos", "PaxosNode", PAXOS_TRAITS),
}
READY_ROUNDS = 5000
"""Ready rounds one node may need in a row before the driver calls it a livelock (a
restarted node re-applying its log in small pages needs one round per page)."""

EXTRA_FACTORIES: dict[str, tuple[CoreFactory, Traits]] = {}
"""Test-only cores (fakes, deliberately broken wrappers) registered by name."""


def load_core(kind: str) -> tuple[CoreFactory, Traits] | None:
    """The factory for ``kind``, or None when its package does not import yet."""
    if kind in EXTRA_FACTORIES:
        return EXTRA_FACTORIES[kind]
    module, name, traits = CORE_MODULES[kind]
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    factory: CoreFactory = cls
    return factory, traits


def new_group(
    factory: CoreFactory,
    p: CoreParams,
    node_id: int,
    storage: SimStorage,
    applied: int,
    rng: random.Random,
) -> GroupState:
    """A replica's in-memory side at a (re)start: a new core over the durable storage,
    told that the state machine holds everything through ``applied``."""
    cfg = Config(
        id=node_id,
        election_tick=p.election_tick,
        heartbeat_tick=p.heartbeat_tick,
        pre_vote=p.pre_vote,
        check_quorum=p.check_quorum,
        max_size_per_msg=p.max_size_per_msg,
        max_inflight_msgs=p.max_inflight_msgs,
        applied=applied,
        rng=random.Random(rng.getrandbits(64)),
    )
    core = factory(cfg, storage)
    hs = storage.hard_state
    return GroupState(
        id=cfg.group,
        core=core,
        applied=applied,
        compacted=storage.first_index() - 1,
        term=hs.term,
        persisted_term=hs.term,
        persisted_vote=hs.vote,
    )


def compact(st: SimStorage, sm: StateMachine, keep: int) -> bool:
    """Record a state machine image at the applied index, then drop the log entries up
    to ``keep`` before it. False (nothing done) when no entry is newer than the last
    snapshot or the state machine is ahead of the log."""
    index = sm.index
    if index <= st.snapshot().metadata.index or index > st.last_index():
        return False
    st.create_snapshot(index, sm.conf_state, encode_image(index, sm.digest))
    st.compact(max(index - keep, st.first_index() - 1))
    return True


class CrashPoint(enum.Enum):
    """Where inside a Ready a node may crash (between Readies is the plain case)."""

    AFTER_PERSIST = "after-persist"
    """Persisted and applied (one transaction); only a leader's early messages sent."""
    BEFORE_ADVANCE = "before-advance"
    """Persisted, applied and sent; the core never heard of it (Config.applied tells it)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreParams:
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_size_per_msg: int = 1 << 20
    max_inflight_msgs: int = 256


@dataclass(slots=True)
class SimNode:
    id: int
    storage: SimStorage
    sm: StateMachine
    group: GroupState | None = None
    """The replica's in-memory side (its core included); None while the node is down."""
    loop: ReplicaLoop | None = None
    boots: int = 0

    @property
    def core(self) -> Core | None:
        return self.group.core if self.group is not None else None

    @property
    def up(self) -> bool:
        return self.group is not None


class Cluster:
    """Holds the nodes, the network and the checker; one ``step`` is one unit of time."""

    def __init__(
        self,
        *,
        factory: CoreFactory,
        checker: Checker,
        n: int,
        rng: random.Random,
        net: Network,
        params: CoreParams,
    ) -> None:
        self.factory = factory
        self.checker = checker
        self.rng = rng
        self.net = net
        self.params = params
        self.now = 0
        self.stats: Counter[str] = Counter()
        self.trace: deque[str] = deque(maxlen=60)
        self.genesis = frozenset(range(1, n + 1))
        self.nodes: dict[int, SimNode] = {}
        self.twin = Twin(checker, self.stats, self.note)
        for i in sorted(self.genesis):
            self.add_node(i)

    # -- lifecycle ----------------------------------------------------------------
    def add_node(self, node_id: int) -> SimNode:
        """A brand-new node. A genesis node's storage holds the genesis membership at
        index 0; a node that joins later starts with none, as ``kvstore serve --join``
        does, and must learn it from a snapshot (the join contract in types.py)."""
        st = SimStorage(self.genesis if node_id in self.genesis else frozenset())
        node = SimNode(node_id, st, StateMachine(conf_state=st.snapshot().metadata.conf_state))
        self.nodes[node_id] = node
        self._boot(node)
        return node

    def _boot(self, node: SimNode) -> None:
        p = self.params
        node.storage.boot_conf = node.sm.conf_state
        node.group = new_group(self.factory, p, node.id, node.storage, node.sm.index, self.rng)
        node.loop = ReplicaLoop(
            node_id=node.id,
            storage=StorageView(node),
            send=sender(self.net, lambda: self.now),
            clock=Clock(lambda: self.now),
            metrics=METRICS,
            endpoints={},
            snapshot_entries=0,  # compaction is a fault of its own (snapshot_and_compact)
            ctx_nonce=node.boots.to_bytes(8, "big"),
        )
        node.boots += 1

    def crash(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.group is None:
            return
        node.group = None
        node.loop = None
        self.stats["crashes"] += 1
        self.note(f"crash {node_id}")

    def restart(self, node_id: int, *, keep_state_machine: bool = True) -> None:
        """Boot a down node from its storage; optionally rebuild its state machine from the
        storage's snapshot (so the core must re-emit entries after it)."""
        node = self.nodes[node_id]
        if node.group is not None:
            return
        if not keep_state_machine:
            snap = node.storage.snapshot()
            index, digest = decode_image(snap.data)
            node.sm = StateMachine(index, digest, snap.metadata.conf_state)
        self._boot(node)
        self.stats["restarts"] += 1
        self.note(f"restart {node_id} applied={node.sm.index}")

    def snapshot_and_compact(self, node_id: int, keep: int) -> None:
        """Record a state machine image at the applied index, then drop log entries up to
        ``keep`` before it (the InstallSnapshot path needs compacted leaders)."""
        node = self.nodes[node_id]
        if compact(node.storage, node.sm, keep):
            self.stats["snapshots"] += 1
            self.note(f"snapshot {node_id} at {node.sm.index}")

    # -- time -----------------------------------------------------------------------
    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.core is not None]

    def tick(self, node: SimNode) -> None:
        assert node.core is not None
        node.core.tick()

    def deliver_due(self, ready_prob: float) -> None:
        for msg in self.net.due(self.now):
            node = self.nodes.get(msg.to)
            if node is None or node.core is None:
                self.net.stats["to_down_node"] += 1
                continue
            node.core.step(msg)
            self.stats["delivered"] += 1
            if ready_prob and self.rng.random() < ready_prob:
                self.handle_ready(node)

    def handle_ready(self, node: SimNode, *, crash_at: CrashPoint | None = None) -> None:
        """Run one node's replica loop until it is quiet (begin, persist, finish, advance).
        ``crash_at``: crash the node inside its first Ready at that point."""
        for _ in range(READY_ROUNDS):
            g, loop = node.group, node.loop
            if g is None or loop is None:
                return
            batch = loop.begin((g,))
            if batch is None:
                return
            self.twin.persist(node, batch.plans)
            if crash_at is CrashPoint.AFTER_PERSIST:
                self.note(f"crash {node.id} after persist, before the late sends")
                self.crash(node.id)
                return
            loop.finish(batch, {}, {})
            loop.replies.flush()
            rd = batch.readies[0][1]
            for rs in rd.read_states:
                self.checker.on_read_state(node.id, rs)
                self.stats["reads"] += 1
            if rd.soft_state is not None and rd.soft_state.role == Role.LEADER:
                self.checker.on_leader(node.id, g.core.status().term, node.storage)
            if crash_at is CrashPoint.BEFORE_ADVANCE:
                self.note(f"crash {node.id} after apply, before advance")
                self.crash(node.id)
                return
            loop.advance(batch)
        raise AssertionError(
            f"node {node.id} still has a Ready after {READY_ROUNDS} rounds (livelock?)"
        )

    def check_step(self) -> None:
        """Per-step checks that read every live node's status."""
        for node in self.up_nodes():
            assert node.core is not None
            s = node.core.status()
            if s.role == Role.LEADER:
                self.checker.on_leader(node.id, s.term, node.storage)

    def statuses(self) -> dict[int, Status]:
        return {n.id: n.core.status() for n in self.nodes.values() if n.core is not None}

    def leader(self) -> int:
        """The live leader of the highest term, or 0."""
        best = (0, 0)
        for nid, s in self.statuses().items():
            if s.role == Role.LEADER and s.term > best[0]:
                best = (s.term, nid)
        return best[1]

    def members(self) -> frozenset[int]:
        """Voters and learners as the most advanced state machine sees them."""
        top = max(self.nodes.values(), key=lambda n: n.sm.index)
        cs = top.sm.conf_state
        return cs.voters | cs.learners | cs.voters_outgoing

    def note(self, what: str) -> None:
        self.trace.append(f"[{self.now}] {what}")


@dataclass(slots=True)
class Attempt:
    value: bytes
    node: int
    pid: ProposalId


class Client:
    """Proposes unique values to whoever it believes leads, following NotLeader hints."""

    def __init__(self, cluster: Cluster, rng: random.Random, prefix: bytes) -> None:
        self.cluster = cluster
        self.rng = rng
        self.prefix = prefix
        self.hint = 0
        self.counter = 0
        self.stats: Counter[str] = Counter()

    def propose(self) -> Attempt | None:
        """One proposal of a fresh value; None when it was refused."""
        c = self.cluster
        node = c.nodes.get(self.hint)
        if node is None or node.core is None:
            up = c.up_nodes()
            if not up:
                return None
            node = self.rng.choice(up)
        assert node.core is not None
        self.counter += 1
        value = self.prefix + b"-%d" % self.counter
        try:
            pid = node.core.propose(value)
        except NotLeaderError as e:
            self.hint = e.leader
            self.stats["not_leader"] += 1
            return None
        except ProposalDroppedError:
            self.stats["dropped"] += 1
            return None
        self.hint = node.id
        self.stats["accepted"] += 1
        c.note(f"propose {value!r} at {node.id} -> {pid}")
        return Attempt(value, node.id, pid)

    def read(self) -> None:
        """A linearizable read request (read_index) at a random live node."""
        c = self.cluster
        up = c.up_nodes()
        if not up:
            return
        node = self.rng.choice(up)
        assert node.core is not None
        self.counter += 1
        ctx = b"r-%d" % self.counter
        c.checker.on_read_request(ctx)
        try:
            node.core.read_index(ctx)
        except (ConsensusError, NotImplementedError):
            self.stats["read_refused"] += 1

    def change(self, change: ConfChange) -> bool:
        node = self.cluster.nodes.get(self.hint)
        if node is None or node.core is None:
            return False
        try:
            pid = node.core.propose_conf_change(change)
        except ConsensusError:
            return False
        self.cluster.note(f"conf change {change} at {node.id} -> {pid}")
        self.stats["conf_changes"] += 1
        return True
