"""The real node driver's interleavings (kvstore/node/driver.py) around the node's own
replica loop (kvstore/node/replica.py), over a real core (Raft's RawNode or the
PaxosNode), the in-memory twin of the node's I/O (twin.py), the seeded network and
crashes at any point.

What tests/sim/cluster.py runs back to back (begin -> persist -> finish -> advance) the
real driver spreads over time; this model keeps each of its moves a separate, randomly
scheduled action, and leaves every Ready decision to ``ReplicaLoop``:
- ITERATE (no Ready in flight): step the inbox, tick (at most 2), ``propose_queued``
  (the queued writes as ONE entry, the queued reads), ``begin`` (take ``ready()``, apply
  the committed conf changes to the core, send at once what ``may_send_before_persist``
  allows) and hand the transaction to the writer;
- STEP (a Ready in flight): a delivered peer message is stepped into the core between
  ``ready()`` and ``advance()`` (``_step_while``), before or after the writer commits
  (the driver does this for Raft only; modelled for Paxos too, a superset);
- COMMIT: the writer's transaction lands atomically: snapshot, entries, hard state, the
  committed entries applied, the membership, a compaction; the writes it applies are
  answered from its results while it commits (``answer_applied``), and a crash right
  after those answers loses the transaction;
- FINISH: ``finish`` (send the rest, answer clients: a write is acknowledged when its
  entry applied with its proposal's term, a read with the applied index once it reached
  the read index), then ``advance``;
- CRASH: at any moment; a transaction not yet committed is lost, early sends are not.
  A power loss also undoes the committed transactions since the last durable one (the
  node's apply-only transactions are not flushed, kvstore/node/persist.py ``durable``).

The checkers of tests/sim/checkers.py watch the storage, applies, leaders and the index
each read is served at; this module adds the acknowledgement checks: at its answer an
acknowledged write is durable on a majority of voters, and at the end every member
applied it at the same index. Nodes that join start with no membership, as
``kvstore serve --join`` does.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable

from kvstore.consensus.paxos import PaxosNode, value
from kvstore.consensus.raft import RawNode
from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    ConsensusError,
    Core,
    Entry,
    Message,
    ReadState,
    Role,
)
from kvstore.node.pending import Waiter, Write
from kvstore.node.persist import durable
from kvstore.node.replica import ReplicaLoop
from kvstore.statemachine import Put, decode_batch

from .checkers import Checker, SafetyViolation
from .cluster import compact, load_core, new_group
from .driver_parts import Answer, DNode, DriverOptions, InFlight, random_options
from .network import PERFECT, Network
from .twin import METRICS, Clock, SimStorage, StateMachine, StorageView, Twin

MAX_TICKS_PER_ITERATION = 2
SLOW_COMMIT_PROB = 0.01
MAX_NODES = 7
HEAL_BOUND_E = 400
"""Healing (perfect network, all up, no new writes) must converge within this many
election timeouts."""


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
        self.twin = Twin(self.checker, self.stats, self.note)
        self.boots = itertools.count()
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
        node.group = new_group(self.factory, p, node.id, node.storage, node.sm.index, self.rng)
        node.loop = ReplicaLoop(
            node_id=node.id,
            storage=StorageView(node),
            send=self._sender(node),
            clock=Clock(lambda: self.now),
            metrics=METRICS,
            endpoints={},
            snapshot_entries=0,  # compaction is a fault of its own (commit)
            ctx_nonce=next(self.boots).to_bytes(8, "big"),  # read contexts stay unique
        )
        if self.opts.unsafe_send_all_early:
            node.loop.may_send_early = lambda *_: True
        node.inbox, node.flight, node.ticks, node.crash_in = [], None, 0, ""

    def _sender(self, node: DNode) -> Callable[[list[Message]], None]:
        def send(msgs: list[Message]) -> None:
            reached: set[int] | None = None
            if node.in_begin:
                self.stats["early_sends"] += len(msgs)
                if node.crash_in == "early":
                    # kill -9 while the transport writes: some peers got the appends.
                    peers = sorted({m.to for m in msgs})
                    reached = set(self.rng.sample(peers, self.rng.randint(0, len(peers))))
                    if self.opts.slow_disk in peers and self.rng.random() < 0.5:
                        # only the slow follower: it is still persisting that tail when a
                        # leader elected without it sends its conflicting entries
                        reached = {self.opts.slow_disk}
            for m in msgs:
                if reached is None or m.to in reached:
                    self.net.send(m, self.now)

        return send

    def crash(self, node: DNode, why: str, *, power: bool = False) -> None:
        if node.group is None:
            return
        lost = node.flight is not None and not node.flight.committed
        self.note(f"crash {node.id} ({why}{'; in-flight transaction lost' if lost else ''})")
        if power and node.last_durable is not None:
            node.storage, node.sm = node.last_durable
            # The commit index need not be durable (persist.durable): it may move back
            # with the applies it came with. Terms and votes may not (checked as ever).
            self.checker.persisted_commit[node.id] = node.storage.hard_state.commit
            self.stats["power_loss_undid_txns"] += 1
            self.note(f"power loss {node.id}: back to applied={node.sm.index}")
        node.last_durable = None
        node.group = None
        node.loop = None
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
        g, loop = node.group, node.loop
        assert g is not None and loop is not None and node.flight is None
        inbox, node.inbox = node.inbox, []
        for m in inbox:
            g.core.step(m)
        ticks, node.ticks = min(node.ticks, MAX_TICKS_PER_ITERATION), 0
        for _ in range(ticks):
            g.core.tick()
        loop.propose_queued(g)
        prior = node.sm.conf_state
        was_leader = g.role == Role.LEADER
        node.in_begin = True
        try:
            batch = loop.begin((g,))
        finally:
            node.in_begin = False
        if batch is None:
            return
        rd = batch.readies[0][1]
        if was_leader and batch.late and rd.hard_state is None:
            # A leader's appends wait for the fsync because of a message riding along.
            self.stats["leader_sends_held"] += 1
        node.flight = InFlight(batch, prior_conf=prior)
        self.note(
            f"ready {node.id}: role={g.role.name} hs={rd.hard_state} "
            f"ents={[(e.index, e.term) for e in rd.entries]} "
            f"committed={[e.index for e in rd.committed]} late={len(batch.late)} "
            f"msgs={[(m.type.name, m.to, m.index) for m in rd.messages]}"
        )
        if node.crash_in == "early" and (rd.entries or rd.hard_state is not None):
            self.crash(node, "after early send, before the persist landed")

    def commit(self, node: DNode) -> None:
        """The writer's transaction: ``persist_plans`` for this node, atomically. The
        writes of its committed entries are answered from its apply results while it
        commits (``ReplicaLoop.answer_applied``); a crash then loses the transaction, not
        the answers."""
        f, loop = node.flight, node.loop
        assert f is not None and not f.committed and loop is not None
        if node.crash_in == "staged" and f.rd.committed:
            acked = self.stats["acked"]
            loop.answer_applied(f.batch, self.twin.results(f.batch.plans))
            self.stats["acked_then_txn_lost"] += self.stats["acked"] - acked
            self.stats["crash_after_early_answers"] += 1
            self.crash(node, "answered from the staged transaction, before its commit")
            return
        if durable(f.batch.plans) and not self.opts.unsafe_flush_nothing:
            node.last_durable = None
        elif node.last_durable is None:
            node.last_durable = (copy.deepcopy(node.storage), copy.deepcopy(node.sm))
            self.stats["not_durable_txns"] += 1
        f.results = self.twin.persist(node, f.batch.plans)
        if f.results:
            loop.answer_applied(f.batch, f.results)
        if self.rng.random() < self.opts.snapshot_prob:
            self._compact(node, self.rng.choice((0, 0, 2, 5)))
            node.last_durable = None  # a compaction makes its transaction durable
        f.committed = True
        if node.crash_in == "committed":
            self.crash(
                node,
                "after the persist landed, before sends, answers and advance",
                power=self.rng.random() < 0.5,
            )

    def finish(self, node: DNode) -> None:
        """After ``await fut``: ``finish`` (sends, answers), then ``advance``."""
        f, loop = node.flight, node.loop
        assert f is not None and f.committed and loop is not None
        loop.finish(f.batch, f.results, {})
        loop.replies.flush()  # at once: the strictest moment for the acknowledgement check
        loop.advance(f.batch)
        node.flight = None

    def _ack(self, node: DNode, value: bytes, index: int) -> None:
        """The driver answers this client now: the entry must already be durable on a
        majority (of the membership before or after this Ready's conf changes)."""
        f = node.flight
        assert f is not None, "a write answered outside its batch"
        e = next(c for c in f.rd.committed if c.index == index)
        configs = [f.prior_conf, node.sm.conf_state]
        configs += [p.conf_state for p in f.batch.plans if p.conf_state is not None]
        if not any(self._durable_on_quorum(e, cs) for cs in configs):
            holders = sorted(n.id for n in self.nodes.values() if self._holds(n, e))
            raise SafetyViolation(
                f"node {node.id} acknowledged {value!r} at index {e.index} term {e.term}, "
                f"durable only on {holders} (voters {sorted(node.sm.conf_state.voters)})"
            )
        self.acked[value] = (e.index, e.term)
        self.stats["acked"] += 1

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

    def _compact(self, node: DNode, keep: int) -> None:
        if compact(node.storage, node.sm, keep):
            self.stats["snapshots"] += 1

    # -- the client ------------------------------------------------------------------
    def client_write(self) -> None:
        node = self.nodes.get(self.hint)
        if node is None or node.group is None:
            up = [n for n in self.nodes.values() if n.group is not None]
            if not up:
                return
            node = self.rng.choice(up)
        g = node.group
        assert g is not None
        if g.role != Role.LEADER:
            self.hint = g.leader
            return
        self.hint = node.id
        self.counter += 1
        key = b"w%d" % self.counter

        def acked(index: int, node: DNode = node) -> None:
            self._ack(node, key, index)

        g.writes.append(Write(Put(key, b""), Answer(acked), float("inf"), self.now))
        self.stats["proposed"] += 1

    def client_read(self) -> None:
        up = [n for n in self.nodes.values() if n.group is not None and n.leader]
        if not up:
            return
        node = self.rng.choice(up)
        assert node.group is not None
        self.counter += 1
        ctx = b"r%d" % self.counter
        self.checker.on_read_request(ctx)

        def served(index: int, node_id: int = node.id) -> None:
            # The index the replica loop serves the read at must cover every write
            # applied anywhere before the read was requested.
            self.checker.on_read_state(node_id, ReadState(index=index, request_ctx=ctx))
            self.stats["reads"] += 1

        node.group.reads.append(Waiter(Answer(served), float("inf")))

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
            how = rng.choice(("now", "power", "early", "early", "early", "staged", "committed"))
            if how == "now":
                self.crash(victim, "kill -9")
            elif how == "power":
                self.crash(victim, "power loss", power=True)
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
            if e is None or e.term != term or v not in [c.key for c in decode_batch(e.data)]:
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
    seed: int, *, steps: int = 200, sabotage: str = "", kind: str = "raft"
) -> Counter[str]:
    """``sabotage``: "early" sends every message before its persist, "flush" makes no
    transaction durable (a power loss undoes them all)."""
    rng = random.Random(seed)
    opts = random_options(rng, steps)
    if sabotage == "early":
        opts = dataclasses.replace(opts, unsafe_send_all_early=True)
    elif sabotage == "flush":
        opts = dataclasses.replace(opts, unsafe_flush_nothing=True, crash_prob=0.1)
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
