"""A simulated sharded cluster: many consensus groups per node over the REAL node storage.

Each node is one ``NodeStorage`` (LMDB in a scratch directory, no fsync: a crash is the
loss of the node's in-memory cores, committed transactions survive as they would a
process crash) hosting any number of groups, each a real core (Raft or Multi-Paxos).
So the split rule, the range check at apply, the range snapshots, the conf_ver bumps
and the session copy tested here are the production code's (kvstore/storage/writer.py
and shard_apply.py, kvstore/shard/*); only the loop that drives them is this module's.

The loop keeps the node driver's rules (kvstore/node/driver.py and shards.py):
- per node, the node's own replica loop (kvstore/node/replica.py) over all of its groups
  and the node's own persist (kvstore/node/persist.py ``persist_plans``): ONE write
  transaction per Ready round for all of its groups (save, apply, record the
  membership); the committed conf changes are applied to the core before the persist;
  a leader's appends may leave before it, everything else after; then ``advance``;
- a group a split created starts after the persist that created it, and where this
  node led the parent it campaigns at once;
- a message for a group the node does not run: a snapshot that overlaps no other local
  replica creates the replica, a leader's append or heartbeat is answered as an empty
  replica would answer it ("send me a snapshot"), anything else is dropped; a snapshot
  for a running group that overlaps another local replica is dropped too;
- zombie replicas are destroyed by the real rule (kvstore/node/zombies.py ``zombies``).

Every persisted Ready feeds the per-group checkers (tests/sim/checkers.py: election
safety, log matching, leader completeness, state machine safety by digest) and the
shard checkers (shard_checkers.py).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kvstore.consensus.types import (
    Config,
    ConfState,
    Core,
    Entry,
    HardState,
    Message,
    Ready,
    Role,
    Snapshot,
)
from kvstore.node import lifecycle
from kvstore.node.pending import GroupState
from kvstore.node.persist import NodeStorageView, ShardChanges, persist_plans
from kvstore.node.replica import Batch, ReplicaLoop
from kvstore.shard import commands as shard_cmds
from kvstore.shard.descriptor import Descriptor
from kvstore.shard.layout import initial_map
from kvstore.statemachine.types import ApplyResult
from kvstore.storage import NodeStorage, tombstone
from kvstore.storage.log import GroupLog

from .checkers import GENESIS_DIGEST, Checker, SafetyViolation, Traits, chain
from .cluster import CoreFactory, CoreParams
from .network import Network
from .shard_checkers import KVModel, MergeChecker, RangeChecker
from .twin import METRICS, Clock, sender

INITIAL_INDEX = 5
"""Sharded groups start their logs here (kvstore/server/sharding.py), so a replica added
later always takes a snapshot, which carries the descriptor."""
READY_ROUNDS = 2000
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None


class StorageView:
    """What the per-group Checker reads of a log (it was written for MemoryStorage):
    the base as ``snapshot().metadata`` without building an image."""

    def __init__(self, glog: GroupLog) -> None:
        self.glog = glog

    def snapshot(self) -> Snapshot:
        return Snapshot(metadata=self.glog.view.base)

    def first_index(self) -> int:
        return self.glog.first_index()

    def last_index(self) -> int:
        return self.glog.last_index()

    def term(self, index: int) -> int:
        return self.glog.term(index)

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        return self.glog.entries(lo, hi, max_size)


@dataclass(slots=True)
class ShardNode:
    id: int
    storage: NodeStorage
    loop: ReplicaLoop
    cores: dict[int, Core] = field(default_factory=dict)
    states: dict[int, GroupState] = field(default_factory=dict)
    """The replica loop's side of each group (rebuilt for a core it has not seen)."""
    up: bool = True
    digest: dict[int, bytes] = field(default_factory=dict)
    """group -> digest of the applied history (tests/sim/checkers.py ``chain``)."""
    role: dict[int, Role] = field(default_factory=dict)

    def descriptors(self, also: tuple[int, ...] = ()) -> dict[int, Descriptor | None]:
        return {g: self.storage.group(g).view.shard for g in (*self.cores, *also)}

    def applied(self, also: tuple[int, ...] = ()) -> dict[int, tuple[int, ConfState]]:
        """group -> (applied index, membership there)."""
        views = {g: self.storage.group(g).view for g in (*self.cores, *also)}
        return {g: (v.applied, v.conf_state) for g, v in views.items()}


ResultHook = Callable[[int, int, Entry, ApplyResult], None]
"""(node, group, entry, result) for every command applied."""


class ShardCluster:
    def __init__(
        self,
        *,
        factory: CoreFactory,
        traits: Traits,
        nodes: int,
        shards: int,
        replicas: int,
        split_keys: list[bytes],
        rng: random.Random,
        net: Network,
        params: CoreParams,
    ) -> None:
        self.factory = factory
        self.traits = traits
        self.rng = rng
        self.net = net
        self.params = params
        self.now = 0
        self.stats: Counter[str] = Counter()
        self.trace: deque[str] = deque(maxlen=80)
        self.checkers: dict[int, Checker] = {}
        self.ranges = RangeChecker()
        self.kv = KVModel()
        self.merges = MergeChecker()
        self.on_result: list[ResultHook] = []
        self._dir = tempfile.mkdtemp(prefix="shardsim-", dir=SCRATCH)
        self.nodes: dict[int, ShardNode] = {}
        ids = list(range(1, nodes + 1))
        smap = initial_map(ids, shards, replicas, split_keys)
        self.next_id = max(d.id for d in smap) + 1
        for i in ids:
            st = NodeStorage(os.path.join(self._dir, str(i)), map_size=64 << 20, sync=False)
            loop = ReplicaLoop(
                node_id=i,
                storage=NodeStorageView(st),
                send=sender(self.net, lambda: self.now),
                clock=Clock(lambda: self.now),
                metrics=METRICS,
                endpoints={},
                snapshot_entries=0,  # compaction is a fault of its own
            )
            self.nodes[i] = ShardNode(i, st, loop)
        for d in smap:
            ck = self.checker(d.id)
            ck.digest_at[INITIAL_INDEX] = GENESIS_DIGEST
            for v in d.voters:
                n = self.nodes[v]
                n.storage.group(d.id).bootstrap(set(d.voters), shard=d, initial_index=INITIAL_INDEX)
                n.digest[d.id] = GENESIS_DIGEST
                n.cores[d.id] = self._core(n, d.id)
        self.ranges.start(smap)
        for n in self.nodes.values():
            self.check_ranges(n)

    def check_ranges(self, node: ShardNode, also: tuple[int, ...] = ()) -> None:
        self.ranges.after_persist(node.id, node.descriptors(also), node.applied(also))

    def close(self) -> None:
        for n in self.nodes.values():
            n.storage.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def checker(self, group: int) -> Checker:
        ck = self.checkers.get(group)
        if ck is None:
            ck = self.checkers[group] = Checker(self.traits, repeatable=shard_cmds.is_admin)
        return ck

    # -- lifecycle ---------------------------------------------------------------------
    def _core(self, node: ShardNode, group: int) -> Core:
        p = self.params
        glog = node.storage.group(group)
        cfg = Config(
            id=node.id,
            group=group,
            election_tick=p.election_tick,
            heartbeat_tick=p.heartbeat_tick,
            pre_vote=p.pre_vote,
            check_quorum=p.check_quorum,
            max_size_per_msg=p.max_size_per_msg,
            max_inflight_msgs=p.max_inflight_msgs,
            applied=glog.view.applied,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        node.role[group] = Role.FOLLOWER
        return self.factory(cfg, glog)

    def crash(self, node_id: int) -> None:
        n = self.nodes[node_id]
        if not n.up:
            return
        n.up = False
        n.cores.clear()
        n.states.clear()
        self.stats["crashes"] += 1
        self.note(f"crash {node_id}")

    def restart(self, node_id: int) -> None:
        """Boot from storage: every group with state there gets a core (as a node's start)."""
        n = self.nodes[node_id]
        if n.up:
            return
        n.up = True
        for g in n.storage.groups():
            glog = n.storage.group(g)
            if glog.view.shard is None and not glog.view.last_index:
                continue
            applied = glog.view.applied
            n.digest[g] = self._known_digest(g, applied, node_id)
            n.cores[g] = self._core(n, g)
        self.stats["restarts"] += 1
        self.note(f"restart {node_id} groups={sorted(n.cores)}")

    def _known_digest(self, group: int, index: int, node: int) -> bytes:
        d = self.checker(group).digest_at.get(index)
        if d is None:
            raise SafetyViolation(
                f"node {node} holds group {group} at applied index {index}, which no "
                "replica applied or installed"
            )
        return d

    def destroy(self, node: ShardNode, group: int) -> None:
        """Drop a replica and its range's data in one transaction (zombies.py)."""
        node.cores.pop(group, None)
        node.states.pop(group, None)
        node.role.pop(group, None)
        node.digest.pop(group, None)
        # A replica created here again starts from the tombstone's hard state
        # (storage/tombstone.py: its term and votes are checked across incarnations)
        # with an empty log: its commit is checked afresh.
        self.checker(group).persisted_commit.pop(node.id, None)
        self.ranges.forget(node.id, group)
        with node.storage.write() as w:
            w.drop_group(group)
        self.stats["replicas_destroyed"] += 1
        self.note(f"destroy replica of group {group} on {node.id}")
        self.check_ranges(node)

    def snapshot_and_compact(self, node_id: int, group: int, keep: int) -> None:
        """Drop log entries up to ``keep`` before the applied index (lagging replicas
        then need a snapshot)."""
        n = self.nodes[node_id]
        if group not in n.cores:
            return
        view = n.storage.group(group).view
        to = min(view.applied, view.last_index) - keep
        if to <= view.base.index:
            return
        with n.storage.write() as w:
            w.compact(group, to)
        self.stats["compactions"] += 1
        self.note(f"compact group {group} on {node_id} to {to}")

    # -- messages -----------------------------------------------------------------------
    def up_nodes(self) -> list[ShardNode]:
        return [n for n in self.nodes.values() if n.up]

    def deliver_due(self) -> None:
        for m in self.net.due(self.now):
            node = self.nodes.get(m.to)
            if node is None or not node.up:
                self.net.stats["to_down_node"] += 1
                continue
            # The node's own lifecycle rules (kvstore/node/lifecycle.py), as the driver
            # runs them (``_step_inbox``).
            r = SimReplicas(self, node)
            if m.group not in node.cores:
                if not lifecycle.receive_unknown(r, m):
                    if m.snapshot is not None:
                        self.stats["snapshot_refused_overlap"] += 1
                    continue
            elif m.snapshot is not None and not lifecycle.snapshot_fits(r, m):
                self.stats["snapshot_refused_overlap"] += 1
                continue
            elif not lifecycle.may_vote(r, m):
                self.stats["vote_unfilled_dropped"] += 1
                continue
            lifecycle.answer_stale_leader(r, m)
            node.cores[m.group].step(m)
            self.stats["delivered"] += 1

    # -- the Ready loop -------------------------------------------------------------------
    def handle_ready(self, node: ShardNode, *, crash_after_persist: bool = False) -> None:
        for _ in range(READY_ROUNDS):
            if not node.up:
                return
            batch = node.loop.begin([self._state(node, g) for g in list(node.cores)])
            if batch is None:
                return
            self._round(node, batch, crash_after_persist)
            crash_after_persist = False
        raise AssertionError(f"node {node.id} still has Readies after {READY_ROUNDS} rounds")

    def _state(self, node: ShardNode, g: int) -> GroupState:
        core = node.cores[g]
        gs = node.states.get(g)
        if gs is None or gs.core is not core:
            view = node.storage.group(g).view
            hs = view.hard_state
            gs = node.states[g] = GroupState(
                id=g,
                core=core,
                applied=view.applied,
                compacted=view.base.index,
                term=hs.term,
                persisted_term=hs.term,
                persisted_vote=hs.vote,
            )
        return gs

    def _round(self, node: ShardNode, batch: Batch, crash: bool) -> None:
        st = node.storage
        readies = [(gs.id, gs.core, rd) for gs, rd in batch.readies]
        before = {g: st.group(g).view.applied for g, _, _ in readies}
        changes = ShardChanges()
        results = persist_plans(st, METRICS, batch.plans, changes)
        created = list(changes.created)
        admin = changes.admin_results
        gone = {source for _, source in changes.merged}
        for g, _, rd in readies:
            if g in gone:
                continue  # merged away in this transaction (checked below)
            if g in created:
                # The Ready of a replica that ran with no state, whose group a split in
                # this persist initialized (lifecycle.after_persist restarts it).
                before[g] = st.group(g).view.applied
            try:
                self._check_ready(node, g, rd, before[g], results.get(g, []), admin.get(g, {}))
            except SafetyViolation as e:
                raise SafetyViolation(f"group {g}: {e}") from e
        self.check_ranges(node, tuple(created))
        if crash:
            self.note(f"crash {node.id} after persist, before the late sends")
            self.crash(node.id)
            return
        node.loop.finish(batch, results, admin)
        for g, core, rd in readies:
            if rd.soft_state is not None and g not in gone:
                node.role[g] = rd.soft_state.role
                if rd.soft_state.role == Role.LEADER:
                    s = core.status()
                    self.checker(g).on_leader(node.id, s.term, StorageView(st.group(g)))  # type: ignore[arg-type]
        node.loop.advance(batch)
        lifecycle.after_persist(SimReplicas(self, node), changes)

    def _check_ready(
        self,
        node: ShardNode,
        g: int,
        rd: Ready,
        applied_before: int,
        results: list[ApplyResult],
        admin: dict[int, int],
    ) -> None:
        ck = self.checker(g)
        glog = node.storage.group(g)
        view = glog.view
        sv = StorageView(glog)
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            index = rd.snapshot.metadata.index
            if index > applied_before:
                ck.checks += 1
                node.digest[g] = self._known_digest(g, index, node.id)
                self.stats["installs"] += 1
                self.note(f"install group {g} on {node.id} at {index}")
                applied_before = index
        if rd.entries:
            ck.on_append(node.id, sv, rd.entries)  # type: ignore[arg-type]
        if rd.hard_state is not None:
            ck.on_hard_state(node.id, rd.hard_state)
        durable_commit = max(view.hard_state.commit, view.base.index)
        by_index: dict[int, list[ApplyResult]] = {}
        for r in results:
            by_index.setdefault(r.index, []).append(r)
        applied = applied_before
        digest = node.digest.get(g, GENESIS_DIGEST)
        for e in rd.committed:
            if e.index <= applied:
                continue
            digest = chain(digest, e)
            ck.on_apply(node.id, e, applied, digest, durable_commit)
            applied = e.index
            self.stats["applied"] += 1
            self.merges.on_admin(node.id, g, e, admin.get(e.index, 0))
            new = admin.get(e.index, 0) if _is_split(e) else 0
            if new:
                # The new group's history starts with its parent's at the split index.
                self.checker(new)._agree(node.id, e.index, digest)
                if new not in node.digest or new not in node.cores:
                    node.digest[new] = digest
                self.stats["splits_applied"] += 1
            rs = by_index.get(e.index, [])
            if rs:
                self.kv.on_entry(node.id, g, e, rs)
            for r in rs:
                for hook in self.on_result:
                    hook(node.id, g, e, r)
        node.digest[g] = digest
        if applied != view.applied:
            raise SafetyViolation(
                f"node {node.id} group {g}: storage applied {view.applied}, the Ready "
                f"applied up to {applied}"
            )

    def settle(self, crash_after_persist: set[int] | None = None) -> None:
        nodes = self.up_nodes()
        self.rng.shuffle(nodes)
        for n in nodes:
            crash = crash_after_persist is not None and n.id in crash_after_persist
            if crash and any(c.has_ready() for c in n.cores.values()):
                crash_after_persist.discard(n.id)  # type: ignore[union-attr]
                self.handle_ready(n, crash_after_persist=True)
            else:
                self.handle_ready(n)
        for n in self.up_nodes():
            for g, core in n.cores.items():
                s = core.status()
                if s.role == Role.LEADER:
                    self.checker(g).on_leader(n.id, s.term, StorageView(n.storage.group(g)))  # type: ignore[arg-type]

    # -- views ---------------------------------------------------------------------------
    def leader(self, group: int) -> int:
        """The live leader of ``group`` with the highest term, or 0."""
        best = (0, 0)
        for n in self.up_nodes():
            core = n.cores.get(group)
            if core is None:
                continue
            s = core.status()
            if s.role == Role.LEADER and s.term > best[0]:
                best = (s.term, n.id)
        return best[1]

    def groups(self) -> list[int]:
        """The live shards (the newest map's ids)."""
        return sorted(d.id for d in self.ranges.map)

    def note(self, what: str) -> None:
        self.trace.append(f"[{self.now}] {what}")


def _is_split(e: Entry) -> bool:
    if not shard_cmds.is_admin(e.data):
        return False
    try:
        return isinstance(shard_cmds.decode(e.data), shard_cmds.Split)
    except ValueError:
        return False


class SimReplicas:
    """A simulated node as the lifecycle rules see it (kvstore/node/lifecycle.py): the
    same decisions the driver takes, with the simulation's bookkeeping (checkers, stats,
    trace) where the driver logs."""

    __slots__ = ("c", "node")

    def __init__(self, cluster: ShardCluster, node: ShardNode) -> None:
        self.c = cluster
        self.node = node

    @property
    def node_id(self) -> int:
        return self.node.id

    def hosted(self) -> list[int]:
        return list(self.node.cores)

    def shard(self, group: int) -> Descriptor | None:
        return self.node.storage.group(group).view.shard

    def leads(self, group: int) -> bool:
        return self.node.role.get(group) == Role.LEADER

    def tombstone(self, group: int) -> HardState | None:
        return self.node.storage.tombstone(group)

    def holds_destroyed_log(self, group: int) -> bool:
        v, mark = self.node.storage.group(group).view, self.node.storage.tombstone_log(group)
        return tombstone.covers(v.last_term, v.last_index, mark, by_term=self.c.traits.raft_log)

    def candidate_holds_destroyed_log(self, group: int, log_term: int, index: int) -> bool:
        mark = self.node.storage.tombstone_log(group)
        raft = self.c.traits.raft_log
        return raft and mark[0] > 0 and tombstone.covers(log_term, index, mark, by_term=True)

    def start(self, group: int, parent: int) -> None:
        if group in self.node.cores:  # one that ran with no state (a vote started it)
            self.node.states.pop(group, None)
            applied = self.node.storage.group(group).view.applied
            self.node.digest[group] = self.c._known_digest(group, applied, self.node.id)
            self.c.stats["unfilled_replicas_split"] += 1
        self.node.cores[group] = self.c._core(self.node, group)
        self.c.stats["split_groups_started"] += 1
        self.c.note(f"node {self.node.id} starts group {group} (split of {parent})")

    def start_empty(self, group: int) -> None:
        self.node.digest[group] = GENESIS_DIGEST
        self.node.cores[group] = self.c._core(self.node, group)
        self.c.stats["replicas_adopted"] += 1
        self.c.note(f"node {self.node.id} starts an empty replica of group {group}")

    def campaign(self, group: int) -> None:
        self.node.cores[group].campaign()

    def stop(self, group: int, merged_into: int) -> None:
        n = self.node
        n.cores.pop(group, None)
        n.states.pop(group, None)
        n.role.pop(group, None)
        n.digest.pop(group, None)
        self.c.ranges.forget(n.id, group)
        self.c.stats["merges_applied"] += 1
        self.c.note(f"node {n.id}: group {merged_into} absorbed group {group}")

    def send(self, m: Message) -> None:
        self.c.net.send(m, self.c.now)

    def merge_anomaly(self, problem: str) -> None:
        # A CommitMerge over a local source not as the coordinator saw it: the node logs
        # it at CRITICAL, as only lost durable state explains it, and the simulation
        # loses none (F10 and F11 showed here first, as lost source writes).
        self.c.stats["merge_anomalies"] += 1
        raise SafetyViolation(f"node {self.node.id}: merge anomaly: {problem}")
