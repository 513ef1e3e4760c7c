"""A model of the real node driver's Ready protocol (kvstore/node/driver.py), over a real
core (Raft's RawNode or the PaxosNode), MemoryStorage, the seeded network and crashes at
any point.

What tests/sim/cluster.py drives atomically (ready -> persist -> send -> apply -> advance)
the real driver spreads over time; this model keeps each of its moves a separate,
randomly scheduled action:
- ITERATE (no Ready in flight): step the inbox, tick (at most 2), propose the queued
  writes as ONE entry, start queued reads, take ``ready()``, apply the committed conf
  changes to the core (``_plan``, before the persist), send at once what
  ``may_send_before_persist`` (the real one, for either core) allows, and hand the
  transaction to the writer;
- STEP (a Ready in flight): a delivered peer message is stepped into the core between
  ``ready()`` and ``advance()`` (``_step_while``), before or after the writer commits
  (the driver does this for Raft only; modelled for Paxos too, a superset);
- COMMIT: the writer's transaction lands atomically: snapshot, entries, hard state, the
  committed entries applied, the membership, a compaction;
- FINISH: send the rest, answer clients (a write is acknowledged when its entry applied
  with its proposal's term), serve read states, ``advance()``;
- CRASH: at any moment; a transaction not yet committed is lost, early sends are not.

The checkers of tests/sim/checkers.py watch the storage, applies and leaders; this module
adds the acknowledgement checks: at its answer an acknowledged write is durable on a
majority of voters, and at the end every member applied it at the same index. Nodes that
join start with no membership, as ``kvstore serve --join`` does.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter, deque
from dataclasses import dataclass, field

from kvstore.consensus.paxos import PaxosNode, value
from kvstore.consensus.raft import RawNode
from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    ConsensusError,
    Core,
    Entry,
    EntryType,
    Message,
    NotLeaderError,
    ProposalDroppedError,
    Ready,
    Role,
    Snapshot,
    has_membership,
)
from kvstore.node.persist import may_send_before_persist

from .checkers import Checker, SafetyViolation, chain, decode_image, encode_image
from .cluster import CoreParams, SimStorage, StateMachine, load_core
from .network import PERFECT, NetConfig, Network

MAX_TICKS_PER_ITERATION = 2
SLOW_COMMIT_PROB = 0.01
MAX_NODES = 7
HEAL_BOUND_E = 400
"""Healing (perfect network, all up, no new writes) must converge within this many
election timeouts."""


@dataclass(slots=True)
class InFlight:
    """One Ready between ``ready()`` and ``advance()``."""

    rd: Ready
    conf_state: ConfState | None
    out: list[Message]
    committed: bool = False
    """The writer's transaction landed."""
    replaced: bool = False
    prior_conf: ConfState = field(default_factory=ConfState)


@dataclass(slots=True)
class DNode:
    id: int
    storage: SimStorage
    sm: StateMachine
    core: Core | None = None
    role: Role = Role.FOLLOWER
    leader: int = 0
    persisted_term: int = 0
    persisted_vote: int = 0
    inbox: list[Message] = field(default_factory=list)
    ticks: int = 0
    writes: list[bytes] = field(default_factory=list)
    reads: list[bytes] = field(default_factory=list)
    inflight: dict[int, tuple[int, list[bytes]]] = field(default_factory=dict)
    flight: InFlight | None = None
    crash_in: str = ""
    """Crash at this point of the next Ready: 'early' (after the early sends, before the
    commit), 'committed' (after the commit, before the sends)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverOptions:
    nodes: int = 3
    steps: int = 200
    net: NetConfig = field(default_factory=lambda: NetConfig(drop=0.02, max_delay=3))
    params: CoreParams = field(default_factory=CoreParams)
    propose_prob: float = 0.5
    read_prob: float = 0.1
    crash_prob: float = 0.02
    partition_prob: float = 0.02
    snapshot_prob: float = 0.05
    membership_prob: float = 0.0
    transfer_prob: float = 0.01
    commit_prob: float = 0.5
    """Chance per action slot that a pending transaction lands (slow disks: low)."""
    finish_prob: float = 0.7
    slow_disk: int = 0
    """This node's transactions land with SLOW_COMMIT_PROB per action slot: peers' messages
    (a new leader's conflicting appends) pile into its core while a Ready is in flight."""
    unsafe_send_all_early: bool = False
    """Sabotage, for the test that proves the checks can fail: send every Ready's
    messages before its persist (votes and append answers included)."""


def random_options(rng: random.Random, steps: int) -> DriverOptions:
    return DriverOptions(
        nodes=rng.choice((3, 3, 5)),
        steps=steps,
        net=NetConfig(
            drop=rng.choice((0.0, 0.02, 0.1)),
            duplicate=rng.choice((0.0, 0.05)),
            max_delay=rng.choice((1, 2, 3, 5)),
        ),
        params=CoreParams(
            election_tick=rng.choice((5, 10)),
            pre_vote=rng.random() < 0.75,
            check_quorum=rng.random() < 0.75,
            max_size_per_msg=rng.choice((64, 256, 1 << 20)),
            max_inflight_msgs=rng.choice((1, 4, 256)),
        ),
        propose_prob=rng.choice((0.2, 0.5, 0.9)),
        crash_prob=rng.choice((0.01, 0.03, 0.06)),
        partition_prob=rng.choice((0.0, 0.02, 0.05)),
        snapshot_prob=rng.choice((0.0, 0.05, 0.2)),
        membership_prob=rng.choice((0.0, 0.0, 0.03)),
        transfer_prob=rng.choice((0.0, 0.02)),
        commit_prob=rng.choice((0.03, 0.15, 0.5, 0.9)),
        finish_prob=rng.choice((0.3, 0.7, 1.0)),
        slow_disk=rng.choice((0, 0, 1, 2)),
    )


class DriverSim:
    def __init__(self, seed: int, opts: DriverOptions, kind: str = "raft") -> None:
        loaded = load_core(kind)
        if loaded is None:
            raise LookupError(f"consensus core {kind!r} does not import")
        self.factory, traits = loaded
        self.raft = traits.raft_log
        self.seed = seed
        self.opts = opts
        self.rng = random.Random(seed ^ 0xD1)
        self.net = Network(random.Random(self.rng.getrandbits(64)), opts.net)
        self.checker = Checker(traits)
        self.stats: Counter[str] = Counter()
        self.trace: deque[str] = deque(maxlen=80)
        self.now = 0
        self.genesis = frozenset(range(1, opts.nodes + 1))
        self.nodes: dict[int, DNode] = {}
        self.down_until: dict[int, int] = {}
        self.heal_at = -1
        self.hint = 0
        self.counter = 0
        self.commit_prob, self.finish_prob = opts.commit_prob, opts.finish_prob
        self.acked: dict[bytes, tuple[int, int]] = {}
        """value -> (index, term) of the entry whose apply answered it."""
        for i in sorted(self.genesis):
            self._add_node(i)

    # -- lifecycle ------------------------------------------------------------------
    def _add_node(self, node_id: int) -> DNode:
        # A node that joins later starts with no membership, as `serve --join` does.
        st = SimStorage(self.genesis if node_id in self.genesis else frozenset())
        node = DNode(node_id, st, StateMachine(conf_state=st.snapshot().metadata.conf_state))
        self.nodes[node_id] = node
        self._boot(node)
        return node

    def _boot(self, node: DNode) -> None:
        p = self.opts.params
        node.storage.boot_conf = node.sm.conf_state
        cfg = Config(
            id=node.id,
            election_tick=p.election_tick,
            heartbeat_tick=p.heartbeat_tick,
            pre_vote=p.pre_vote,
            check_quorum=p.check_quorum,
            max_size_per_msg=p.max_size_per_msg,
            max_inflight_msgs=p.max_inflight_msgs,
            applied=node.sm.index,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        node.core = self.factory(cfg, node.storage)
        hs = node.storage.hard_state
        node.role, node.leader = Role.FOLLOWER, 0
        node.persisted_term, node.persisted_vote = hs.term, hs.vote
        node.inbox, node.writes, node.reads, node.inflight = [], [], [], {}
        node.flight, node.ticks, node.crash_in = None, 0, ""

    def crash(self, node: DNode, why: str) -> None:
        if node.core is None:
            return
        lost = node.flight is not None and not node.flight.committed
        self.note(f"crash {node.id} ({why}{'; in-flight transaction lost' if lost else ''})")
        node.core = None
        node.flight = None
        self.stats["crashes"] += 1
        if lost:
            self.stats["crash_lost_txn"] += 1
        self.down_until[node.id] = self.now + self.rng.randint(1, self.rng.choice((5, 40)))

    def restart(self, node: DNode) -> None:
        self.down_until.pop(node.id, None)
        self._boot(node)
        self.stats["restarts"] += 1
        self.note(f"restart {node.id} applied={node.sm.index}")

    def note(self, what: str) -> None:
        self.trace.append(f"[{self.now}] {what}")

    # -- the driver's moves ----------------------------------------------------------
    def iterate(self, node: DNode) -> None:
        """``_iteration`` up to the hand-off to the writer."""
        core = node.core
        assert core is not None and node.flight is None
        inbox, node.inbox = node.inbox, []
        for m in inbox:
            core.step(m)
        ticks, node.ticks = min(node.ticks, MAX_TICKS_PER_ITERATION), 0
        for _ in range(ticks):
            core.tick()
        self._propose_writes(node)
        self._start_reads(node)
        if not core.has_ready():
            return
        rd = core.ready()
        prior = node.sm.conf_state
        cs: ConfState | None = None
        for e in rd.committed:
            if e.type == EntryType.CONF_CHANGE:
                cs = core.apply_conf_change(ConfChange.decode(e.data))
        early = self.opts.unsafe_send_all_early or may_send_before_persist(
            node.role, node.persisted_term, node.persisted_vote, rd
        )
        out: list[Message] = []
        if not early and node.role == Role.LEADER and rd.messages and rd.hard_state is None:
            # A leader's appends wait for the fsync because of a message riding along.
            self.stats["leader_sends_held"] += 1
        if early:
            reached: set[int] | None = None
            if node.crash_in == "early":
                # kill -9 while the transport writes: some peers got the appends, some not.
                peers = sorted({m.to for m in rd.messages})
                reached = set(self.rng.sample(peers, self.rng.randint(0, len(peers))))
                if self.opts.slow_disk in peers and self.rng.random() < 0.5:
                    # only the slow follower: it is still persisting that tail when a
                    # leader elected without it sends its conflicting entries
                    reached = {self.opts.slow_disk}
            for m in rd.messages:
                if reached is None or m.to in reached:
                    self.net.send(m, self.now)
            self.stats["early_sends"] += len(rd.messages)
        else:
            out = list(rd.messages)
        node.flight = InFlight(rd, cs, out, prior_conf=prior)
        self.note(
            f"ready {node.id}: role={node.role.name} hs={rd.hard_state} "
            f"ents={[(e.index, e.term) for e in rd.entries]} "
            f"committed={[e.index for e in rd.committed]} early={early} "
            f"msgs={[(m.type.name, m.to, m.index) for m in rd.messages]}"
        )
        if node.crash_in == "early" and (rd.entries or rd.hard_state is not None):
            self.crash(node, "after early send, before the persist landed")

    def commit(self, node: DNode) -> None:
        """The writer's transaction: ``persist_plans`` for this node, atomically."""
        f = node.flight
        assert f is not None and not f.committed
        rd, st = f.rd, node.storage
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            self._install(node, rd.snapshot)
        elif rd.snapshot is not None:  # index 0: a joiner's membership (the join contract)
            st.apply_snapshot(rd.snapshot)
            if not has_membership(node.sm.conf_state):
                node.sm.conf_state = st.conf_state
        if rd.entries:
            st.append(rd.entries)
            self.checker.on_append(node.id, st, rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
            self.checker.on_hard_state(node.id, rd.hard_state)
        durable_commit = max(st.hard_state.commit, st.snapshot().metadata.index)
        for e in rd.committed:
            if e.index <= node.sm.index:
                raise SafetyViolation(
                    f"node {node.id} re-applies index {e.index} (applied {node.sm.index})"
                )
            digest = chain(node.sm.digest, e)
            self.checker.on_apply(node.id, e, node.sm.index, digest, durable_commit)
            node.sm.index, node.sm.digest = e.index, digest
            self.checker.max_applied = max(self.checker.max_applied, e.index)
            self.stats["applied"] += 1
        if f.conf_state is not None:
            node.sm.conf_state = f.conf_state
            self.stats["conf_changes_applied"] += 1
        if self.rng.random() < self.opts.snapshot_prob:
            self._compact(node, self.rng.choice((0, 0, 2, 5)))
        f.committed = True
        if node.crash_in == "committed":
            self.crash(node, "after the persist landed, before sends, answers and advance")

    def finish(self, node: DNode) -> None:
        """After ``await fut``: send, ``_after_persist``, ``advance``."""
        f, core = node.flight, node.core
        assert f is not None and f.committed and core is not None
        rd = f.rd
        for m in f.out:
            self.net.send(m, self.now)
        if rd.soft_state is not None:
            node.leader, node.role = rd.soft_state.leader, rd.soft_state.role
            if node.role != Role.LEADER:
                node.writes = []
        if rd.hard_state is not None:
            node.persisted_term, node.persisted_vote = rd.hard_state.term, rd.hard_state.vote
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            for idx in [i for i in node.inflight if i <= rd.snapshot.metadata.index]:
                del node.inflight[idx]
        for e in rd.committed:
            inf = node.inflight.pop(e.index, None)
            if inf is not None and inf[0] == e.term:
                self._ack(node, e, inf[1], f)
        for rs in rd.read_states:
            self.checker.on_read_state(node.id, rs)
            self.stats["reads"] += 1
        core.advance(rd)
        node.flight = None

    def _ack(self, node: DNode, e: Entry, values: list[bytes], f: InFlight) -> None:
        """The driver answers these clients now: the entry must already be durable on a
        majority (of the membership before or after this Ready's conf changes)."""
        configs = [f.prior_conf, node.sm.conf_state]
        if not any(self._durable_on_quorum(e, cs) for cs in configs):
            holders = sorted(n.id for n in self.nodes.values() if self._holds(n, e))
            raise SafetyViolation(
                f"node {node.id} acknowledged {values} at index {e.index} term {e.term}, "
                f"durable only on {holders} (voters {sorted(node.sm.conf_state.voters)})"
            )
        for v in values:
            self.acked[v] = (e.index, e.term)
        self.stats["acked"] += len(values)

    def _holds(self, n: DNode, e: Entry) -> bool:
        """Node ``n`` durably holds committed entry ``e`` (Paxos: the same value, in
        whatever ballot it was last accepted)."""
        st = n.storage
        if st.snapshot().metadata.index >= e.index:
            return n.sm.index >= e.index
        try:
            if self.raft:
                return st.term(e.index) == e.term
            return value.chosen(st.entries(e.index, e.index + 1)[0]) == e
        except ConsensusError:
            return False

    def _durable_on_quorum(self, e: Entry, cs: ConfState) -> bool:
        for voters in (cs.voters, cs.voters_outgoing):
            if voters:
                have = sum(1 for v in voters if v in self.nodes and self._holds(self.nodes[v], e))
                if have * 2 <= len(voters):
                    return False
        return bool(cs.voters)

    def _install(self, node: DNode, snap: Snapshot) -> None:
        self.checker.on_install(node.id, snap, node.sm.index)
        node.storage.apply_snapshot(snap)
        index, digest = decode_image(snap.data)
        node.sm = StateMachine(index, digest, snap.metadata.conf_state)
        self.checker.max_applied = max(self.checker.max_applied, index)
        self.stats["installs"] += 1
        self.note(f"install {node.id} snapshot at {index}")

    def _compact(self, node: DNode, keep: int) -> None:
        st, index = node.storage, node.sm.index
        if index <= st.snapshot().metadata.index or index > st.last_index():
            return
        st.create_snapshot(index, node.sm.conf_state, encode_image(index, node.sm.digest))
        st.compact(max(index - keep, st.first_index() - 1))
        self.stats["snapshots"] += 1

    def _propose_writes(self, node: DNode) -> None:
        core = node.core
        assert core is not None
        if not node.writes:
            return
        writes, node.writes = node.writes, []
        if node.role != Role.LEADER:
            return
        try:
            pid = core.propose(b",".join(writes))
        except (NotLeaderError, ProposalDroppedError):
            return
        # An older proposal of ours displaced at this index fails (never answered ok).
        node.inflight[pid.index] = (pid.term, writes)
        self.stats["proposed"] += 1

    def _start_reads(self, node: DNode) -> None:
        core = node.core
        assert core is not None
        reads, node.reads = node.reads, []
        for ctx in reads:
            try:
                core.read_index(ctx)
            except ConsensusError:
                self.stats["read_refused"] += 1

    # -- the client ------------------------------------------------------------------
    def client_write(self) -> None:
        node = self.nodes.get(self.hint)
        if node is None or node.core is None:
            up = [n for n in self.nodes.values() if n.core is not None]
            if not up:
                return
            node = self.rng.choice(up)
        if node.role != Role.LEADER:
            self.hint = node.leader
            return
        self.hint = node.id
        self.counter += 1
        node.writes.append(b"w%d" % self.counter)

    def client_read(self) -> None:
        up = [n for n in self.nodes.values() if n.core is not None and n.leader]
        if not up:
            return
        node = self.rng.choice(up)
        self.counter += 1
        ctx = b"r%d" % self.counter
        self.checker.on_read_request(ctx)
        node.reads.append(ctx)

    # -- faults ------------------------------------------------------------------------
    def faults(self) -> None:
        o, rng = self.opts, self.rng
        up = [n for n in self.nodes.values() if n.core is not None]
        for nid, at in list(self.down_until.items()):
            if at <= self.now:
                self.restart(self.nodes[nid])
        if up and rng.random() < o.crash_prob:
            leaders = [n for n in up if n.role == Role.LEADER]
            victim = rng.choice(leaders if leaders and rng.random() < 0.5 else up)
            how = rng.choice(("now", "early", "early", "early", "committed"))
            if how == "now":
                self.crash(victim, "kill -9")
            else:
                victim.crash_in = how
                self.note(f"node {victim.id} will crash at '{how}'")
        if rng.random() < o.partition_prob:
            ids = sorted(self.nodes)
            side = set(rng.sample(ids, rng.randint(1, len(ids) // 2)))
            ld = self._leader()
            if ld is not None and rng.random() < 0.5:
                # The leader and a minority of followers: the minority keeps taking the
                # old leader's entries that the majority's new leader will replace.
                others = [i for i in ids if i != ld.id]
                side = {ld.id, *rng.sample(others, (len(ids) - 1) // 2 - 1)}
                if o.slow_disk in others and len(side) > 1:
                    side = {ld.id, o.slow_disk}  # its Ready in flight when the new leader calls
            self.net.partition(side, ids)
            if ld is not None and len(side) == 2 and rng.random() < 0.5:
                # Asymmetric: the old leader still reaches its follower, nothing reaches
                # the old leader; the follower hears both leaders (old entries in flight
                # when the new leader's conflicting appends arrive).
                buddy = min(side - {ld.id})
                self.net._cut = {(x, ld.id) for x in ids if x != ld.id} | {
                    (ld.id, x) for x in ids if x not in side
                }
                self.net._cut -= {(x, buddy) for x in ids}
                self.stats["asymmetric_partitions"] += 1
            self.heal_at = self.now + rng.randint(3, rng.choice((10, 60)))
            self.note(f"partition {sorted(side)}")
            self.stats["partitions"] += 1
        if self.heal_at == self.now:
            self.net.heal()
        if rng.random() < o.transfer_prob:
            self._transfer()
        if rng.random() < o.membership_prob:
            self._change_membership()

    def _leader(self) -> DNode | None:
        best: tuple[int, DNode | None] = (-1, None)
        for n in self.nodes.values():
            s = n.core.status() if n.core is not None else None
            if s is not None and s.role == Role.LEADER and s.term > best[0]:
                best = (s.term, n)
        return best[1]

    def _transfer(self) -> None:
        ld = self._leader()
        if ld is None or ld.core is None:
            return
        others = sorted(ld.core.status().conf_state.voters - {ld.id})
        if others:
            try:
                ld.core.transfer_leadership(self.rng.choice(others))
                self.stats["transfers"] += 1
            except ConsensusError:
                pass

    def _change_membership(self) -> None:
        ld = self._leader()
        if ld is None or ld.core is None:
            return
        cs = ld.core.status().conf_state
        r = self.rng.random()
        change: ConfChange | None = None
        if r < 0.4 and len(self.nodes) < MAX_NODES:
            new_id = max(self.nodes) + 1
            self._add_node(new_id)
            change = ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=new_id)
        elif r < 0.8 and cs.learners:
            change = ConfChange(type=ConfChangeType.ADD_NODE, node_id=min(cs.learners))
        elif len(cs.voters) > 3:
            change = ConfChange(
                type=ConfChangeType.REMOVE_NODE, node_id=self.rng.choice(sorted(cs.voters))
            )
        if change is None:
            return
        try:
            ld.core.propose_conf_change(change)
            self.stats["conf_changes"] += 1
            self.note(f"conf change {change} at {ld.id}")
        except ConsensusError:
            pass

    # -- the scheduler -------------------------------------------------------------------
    def step(self, *, faults: bool) -> None:
        rng = self.rng
        if faults:
            self.faults()
        for node in self.nodes.values():
            if node.core is not None and rng.random() < 0.9:
                node.ticks += 1
        for m in self.net.due(self.now):
            to = self.nodes.get(m.to)
            if to is None or to.core is None:
                continue
            self.stats["delivered"] += 1
            if to.flight is not None and rng.random() < 0.7:
                # _step_while: stepped between ready() and advance()
                to.core.step(m)
                self.stats["stepped_in_flight"] += 1
                self._count_replaced(to)
            else:
                to.inbox.append(m)
        if faults and rng.random() < self.opts.propose_prob:
            self.client_write()
        if faults and rng.random() < self.opts.read_prob:
            self.client_read()
        order = list(self.nodes.values())
        rng.shuffle(order)
        for node in order:
            for _ in range(3):
                self._act(node)
        for node in self.nodes.values():
            if node.core is not None and node.core.status().role == Role.LEADER:
                s = node.core.status()
                self.checker.on_leader(node.id, s.term, node.storage)

    def _count_replaced(self, node: DNode) -> None:
        """Stats: did that step replace entries of the Ready in flight (the case where
        advance() must not mark the replacements durable)?"""
        f, core = node.flight, node.core
        if f is None or core is None or not f.rd.entries or f.replaced:
            return
        last = f.rd.entries[-1]
        now = _current_term(core, last.index)
        if now != last.term:
            f.replaced = True
            self.stats["in_flight_entries_replaced"] += 1
            if now is not None:
                self.stats["in_flight_entries_replaced_same_length"] += 1

    def _act(self, node: DNode) -> None:
        if node.core is None:
            return
        f = node.flight
        if f is None:
            self.iterate(node)
        elif not f.committed:
            slow = node.id == self.opts.slow_disk and self.commit_prob < 1
            if self.rng.random() < (SLOW_COMMIT_PROB if slow else self.commit_prob):
                self.commit(node)
        elif self.rng.random() < self.finish_prob:
            self.finish(node)

    def run(self) -> Counter[str]:
        o = self.opts
        for self.now in range(o.steps):
            self.step(faults=True)
            if self.now % 25 == 24:
                self.checker.full_log_matching({n.id: n.storage for n in self.nodes.values()})
        self.heal()
        return self.stats + self.net.stats

    def heal(self) -> None:
        """Perfect network, healthy disks, everyone up; then every acknowledged write must
        be applied by every member at the index it was acknowledged at."""
        self.net.heal()
        self.net.config = PERFECT
        # A disk slower than the election timeout (as some schedules make it) duels
        # elections without PreVote for thousands of ticks: liveness needs a healthy disk.
        self.commit_prob = self.finish_prob = 1.0
        for n in self.nodes.values():
            n.crash_in = ""
            if n.core is None:
                self.restart(n)
        self.note("healed")
        bound = self.now + HEAL_BOUND_E * self.opts.params.election_tick
        while True:
            self.now += 1
            self.step(faults=False)
            if self._converged():
                break
            if self.now > bound:
                applied = {n.id: n.sm.index for n in self.nodes.values()}
                raise SafetyViolation(f"liveness: no convergence after healing: {applied}")
        self.checker.full_log_matching({n.id: n.storage for n in self.nodes.values()})
        for v, (index, term) in self.acked.items():
            e = self.checker.chosen.get(index)
            if e is None or e.term != term or v not in e.data.split(b","):
                raise SafetyViolation(
                    f"acknowledged write {v!r} (index {index}, term {term}) lost: "
                    f"index {index} holds {e}"
                )

    def _converged(self) -> bool:
        ld = self._leader()
        if ld is None or ld.core is None:
            return False
        members = ld.sm.conf_state.voters | ld.sm.conf_state.learners
        commit = ld.core.status().commit
        top = max((i for i, _ in self.acked.values()), default=0)
        if commit < top:
            return False
        for nid in members:
            n = self.nodes.get(nid)
            if n is None or n.core is None or n.flight is not None or n.sm.index != commit:
                return False
        self.checker.check_converged(
            {nid: (self.nodes[nid].sm.index, self.nodes[nid].sm.digest) for nid in members}
        )
        return True


def _current_term(core: Core, index: int) -> int | None:
    """The term (Raft) or ballot (Paxos) the core's log now holds at ``index``; None if
    the log no longer reaches it."""
    try:
        if isinstance(core, RawNode):
            return core.raft.log.term(index) if core.raft.log.last_index() >= index else None
        assert isinstance(core, PaxosNode)
        return core.log.get(index).term if core.log.last_index() >= index else None
    except ConsensusError:
        return None


def run_driver_schedule(
    seed: int, *, steps: int = 200, sabotage: bool = False, kind: str = "raft"
) -> Counter[str]:
    rng = random.Random(seed)
    opts = random_options(rng, steps)
    if sabotage:
        opts = dataclasses.replace(opts, unsafe_send_all_early=True)
    sim = DriverSim(seed, opts, kind)
    try:
        return sim.run()
    except (SafetyViolation, ConsensusError, AssertionError, ValueError) as e:
        lines = [
            f"{kind} driver-interleaving seed {seed} failed: {type(e).__name__}: {e}",
            str(opts),
        ]
        lines += list(sim.trace)
        raise SafetyViolation("\n".join(lines)) from e
