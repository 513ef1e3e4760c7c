"""The sharded simulation's actors: writers (clients), the mover and the merge coordinator.

Rules they keep: the writers put unique values with exactly-once sessions, routed by a
possibly stale copy of the shard map, and retry with the same seq (after a stale route,
a lost leadership, a crash, or a timeout while the first attempt may still apply). The
mover takes the placement loop's steps for a move (kvstore/shard/placement.py: learner,
catch-up, promote, leadership off the source, remove). The merger takes the merge
coordinator's steps (kvstore/node/merge_coordinator.py: checks, source leadership to the
target leader's node, PrepareMerge, wait until EVERY source replica applied it,
CommitMerge; rollback only when no CommitMerge can apply). Neither starts on a shard
the other is changing, and no membership change goes to a frozen merge source.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections import Counter
from dataclasses import dataclass

from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    ConsensusError,
    Entry,
    NotLeaderError,
    ProposalId,
    Role,
)
from kvstore.shard import commands as shard_cmds
from kvstore.shard.descriptor import Descriptor
from kvstore.shard.merging import check_merge
from kvstore.shard.shardmap import ShardMap
from kvstore.shard.split import SplitError
from kvstore.statemachine.commands import Put, encode_batch
from kvstore.statemachine.types import ApplyError, ApplyResult

from .checkers import SafetyViolation
from .shard_cluster import ShardCluster

MAX_PENDING = 6
RETRY_AFTER = 6
"""Steps after which a client may give up waiting on an attempt and send it again."""
MOVE_STEPS = 300
"""A move not done after this many steps is abandoned (the placement loop retries)."""
MERGE_APPLY_STEPS = 60
"""Steps every source replica gets to apply the PrepareMerge before the merge rolls back."""
RESUME_STEPS = 2 * MERGE_APPLY_STEPS
"""The watchdog's RESUME_AFTER_S: a frozen source with no merge running is resumed."""
KEYS = [bytes([a, b]) for a in b"abcdefgh" for b in b"abcd"]


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

    def __init__(self, cluster: ShardCluster, rng: random.Random, route_check: float) -> None:
        self.c = cluster
        self.rng = rng
        self.route_check = route_check
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
        if self.rng.random() < self.route_check:
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

    def busy(self) -> set[int]:
        return {m.group for m in self.moves}

    def start(self, merging: set[int]) -> None:
        c = self.c
        free = [g for g in c.groups() if g not in self.busy() | merging]
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

    def drive(self, merging: set[int]) -> None:
        for m in list(self.moves):
            if self.c.now - m.started > MOVE_STEPS:
                self.moves.remove(m)
                self.stats["moves_abandoned"] += 1
                continue
            if m.group in merging:
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
        node = c.nodes[leader]
        d = node.storage.group(m.group).view.shard
        if d is None or d.merging_into:
            return False  # a frozen merge source refuses membership changes
        core = node.cores[m.group]
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


# -- merges ----------------------------------------------------------------------------
@dataclass(slots=True)
class Merge:
    left: int
    right: int
    node: int
    """The coordinator: the left shard's leader when the merge started."""
    started: int
    phase: str = "lead"
    src: Descriptor | None = None
    """The source as its PrepareMerge froze it."""
    waited: int = 0
    last_try: int = -100
    prepared: shard_cmds.PrepareMerge | None = None
    """The PrepareMerge proposed (it may apply later: the merge then resumes)."""


class Merger:
    """Runs merges the way the merge coordinator does (see the module rules)."""

    def __init__(self, cluster: ShardCluster, rng: random.Random, *, wait_all: bool = True) -> None:
        self.c = cluster
        self.rng = rng
        self.wait_all = wait_all
        """False: a broken coordinator that commits once the source's leader applied
        the PrepareMerge (test_shard_broken.py)."""
        self.merges: list[Merge] = []
        self.stats: Counter[str] = Counter()
        self._frozen: dict[tuple[int, int], int] = {}
        """(frozen source, its merge index) -> step first seen frozen with no merge."""

    def busy(self) -> set[int]:
        return {g for m in self.merges for g in (m.left, m.right)}

    def start(self, moving: set[int]) -> None:
        c = self.c
        pairs = []
        ds = list(c.ranges.map)
        for a, b in itertools.pairwise(ds):
            if not {a.id, b.id} & (self.busy() | moving):
                pairs.append((a.id, b.id))
        if not pairs:
            return
        left_id, right_id = self.rng.choice(pairs)
        leader = c.leader(left_id)
        if not leader:
            return
        node = c.nodes[leader]
        if right_id not in node.cores:
            self.stats["merge_refused_placement"] += 1
            return
        left = node.storage.group(left_id).view.shard
        right = node.storage.group(right_id).view.shard
        if left is None or right is None or left.end != right.start:
            return
        try:
            check_merge(left, right)
        except SplitError:
            self.stats["merge_refused"] += 1
            return
        self.merges.append(Merge(left_id, right_id, leader, c.now))
        self.stats["merges_started"] += 1
        c.note(f"merge {right.describe()} into {left.describe()} (coordinator {leader})")

    def drive(self) -> None:
        self._watchdog()
        for m in list(self.merges):
            done = self._step(m)
            if done:
                self.merges.remove(m)
                self.stats[f"merges_{done}"] += 1
                self.c.note(f"merge of {m.right} into {m.left}: {done}")

    def _watchdog(self) -> None:
        """The merge watchdog (merge_coordinator.resume_stale): a source frozen for
        RESUME_STEPS with no merge of it running is resumed: it waits for every replica,
        then commits, or fences and rolls back when the target moved on (rolls back
        at once when the target is gone)."""
        c = self.c
        busy = self.busy()
        frozen = {}
        for g in c.groups():
            held = self._held(g)
            if held is not None and held.merging_into and g not in busy:
                frozen[(g, held.merge_index)] = held
        self._frozen = {k: self._frozen.get(k, c.now) for k in frozen}
        for key, d in frozen.items():
            if c.now - self._frozen[key] < RESUME_STEPS:
                continue
            del self._frozen[key]
            m = Merge(d.merging_into, d.id, c.leader(d.id), c.now, phase="wait", src=d)
            if d.merging_into not in c.groups():
                # The target was merged away meanwhile: no CommitMerge of this prepare
                # can apply (merging.target_merged_away), roll back without a fence.
                m.phase = "rollback"
            self.merges.append(m)
            self.stats["merges_resumed"] += 1
            c.note(f"merge of {d.id} into {d.merging_into}: resumed by the watchdog")

    def _core(self, group: int) -> tuple[int, object] | None:
        leader = self.c.leader(group)
        if not leader:
            return None
        return leader, self.c.nodes[leader].cores[group]

    def _step(self, m: Merge) -> str:
        c = self.c
        retry = c.now - m.last_try >= 10
        if m.phase == "lead":
            if m.prepared is None and c.now - m.started > MERGE_APPLY_STEPS:
                return "abandoned"  # nothing proposed: nothing to undo
            if c.now - m.started > RESUME_STEPS:
                # The coordinator gives up on leadership it cannot get (LEAD_WAIT_S); a
                # PrepareMerge that applied, or applies later, is resumed by the watchdog.
                return "abandoned"
            leader = c.leader(m.right)
            if not leader:
                return ""
            core = c.nodes[leader].cores[m.right]
            if leader != m.node:
                if retry:
                    m.last_try = c.now
                    with contextlib.suppress(ConsensusError, NotImplementedError):
                        core.transfer_leadership(m.node)
                return ""
            node = c.nodes[m.node]
            left = node.storage.group(m.left).view.shard
            right = node.storage.group(m.right).view.shard
            if left is None or right is None:
                return "abandoned"
            if right.merging_into == m.left:
                m.src, m.phase = right, "wait"
                return ""
            if m.prepared is not None and right.epoch != m.prepared.source_epoch:
                # The source moved on: the PrepareMerge in flight, if any, can only be
                # refused now.
                return "abandoned"
            if m.prepared is None:
                try:
                    check_merge(left, right)
                except SplitError:
                    return "abandoned"
            if retry:
                # Once proposed, the same PrepareMerge is proposed again until it shows
                # or the source's epoch moves on (it may still apply: the merge then
                # fences and rolls back if the target changed meanwhile). A lost proposal
                # leaves nothing; one that applies twice is refused the second time.
                m.last_try = c.now
                prep = m.prepared or shard_cmds.PrepareMerge(m.left, right.epoch, left.epoch)
                m.prepared = prep
                with contextlib.suppress(ConsensusError):
                    core.propose(shard_cmds.encode(prep))
                    self.stats["prepares_proposed"] += 1
            return ""
        src = m.src
        assert src is not None
        if m.phase != "rollback" and src.merging_into not in c.groups():
            # The target was merged away meanwhile (a merge of it started while this
            # source stood frozen into it, its coordinator gone): no CommitMerge or
            # FenceMerge can reach it (merge_coordinator: no replica, UnavailableOp), and
            # the watchdog rolls the source back (merging.target_merged_away).
            return "abandoned"
        if m.phase == "wait":
            m.waited += 1
            ready = [n for n in src.replicas if self._applied(n, src)]
            enough = set(ready) == set(src.replicas)
            if not self.wait_all:
                enough = self._applied(c.leader(m.right), src)
            if enough:
                m.phase, m.last_try = "commit", -100
            elif m.waited > MERGE_APPLY_STEPS:
                m.phase, m.last_try = "fence", -100
            return ""
        if m.phase == "fence":
            # Before a rollback the target is fenced (FenceMerge: version + 1), so no
            # CommitMerge still in flight can apply after the source is unfrozen.
            seen = self._target_shows(src)
            if seen == "committed":
                return "committed"
            if seen == "refused":
                m.phase, m.last_try = "rollback", -100
                return ""
            if seen == "lost":
                # The coordinator's node no longer holds the source: its outcome is not
                # known here (merge_coordinator: UnavailableOp); the watchdog resumes a
                # source still frozen elsewhere.
                return "abandoned"
            got = self._core(m.left)
            if got is not None and retry:
                m.last_try = c.now
                with contextlib.suppress(ConsensusError):
                    got[1].propose(shard_cmds.encode(shard_cmds.FenceMerge(src.id)))  # type: ignore[attr-defined]
            return ""
        if m.phase == "commit":
            seen = self._target_shows(src)
            if seen == "committed":
                return "committed"
            if seen:
                # Refused now, refused for ever; the coordinator still fences before it
                # rolls back (a CommitMerge of another coordinator may be in flight).
                m.phase, m.last_try = "fence", -100
                return ""
            got = self._core(m.left)
            if got is not None and retry:
                m.last_try = c.now
                with contextlib.suppress(ConsensusError):
                    got[1].propose(shard_cmds.encode(shard_cmds.CommitMerge(src)))  # type: ignore[attr-defined]
                    self.stats["commits_proposed"] += 1
            return ""
        # rollback
        if not self.c.leader(m.right):
            return ""
        held = self._held(m.right)
        if held is None or not held.merging_into:
            return "rolled_back"
        got = self._core(m.right)
        if got is not None and retry:
            m.last_try = c.now
            with contextlib.suppress(ConsensusError):
                got[1].propose(shard_cmds.encode(shard_cmds.RollbackMerge(src.epoch)))  # type: ignore[attr-defined]
        return ""

    def _target_shows(self, src: Descriptor) -> str:
        """What the target's live leader has applied of the merge of the frozen ``src``:
        "committed" (it covers the source); "refused" (its epoch is past the prepared one,
        so no CommitMerge ordered after that point can apply, and its node still holds the
        frozen source, so none applied before it: a CommitMerge destroys the local source);
        "lost" (past the prepared epoch, but the node no longer holds the source); ""
        (no leader, or nothing past the prepared epoch applied there yet). A leader's
        applied state may lag what it committed (a new leader, a restart): an epoch OLDER
        than the prepared one says nothing, and a rollback decided on it lets a
        CommitMerge still in the log apply over the unfrozen source (FINDINGS.md F11)."""
        leader = self.c.leader(src.merging_into)
        if not leader:
            return ""
        node = self.c.nodes[leader]
        held = node.storage.group(src.merging_into).view.shard
        if held is None:
            return ""
        if held.covers(src.start, src.end):
            return "committed"
        if not held.epoch > src.merge_target_epoch:
            return ""
        if src.id in node.cores and node.storage.group(src.id).view.shard == src:
            return "refused"
        return "lost"

    def _held(self, group: int) -> Descriptor | None:
        """The group's descriptor at its live leader (None: no leader now)."""
        leader = self.c.leader(group)
        return self.c.nodes[leader].storage.group(group).view.shard if leader else None

    def _applied(self, node_id: int, src: Descriptor) -> bool:
        if not node_id:
            return False
        n = self.c.nodes[node_id]
        if not n.up or src.id not in n.cores:
            return False
        v = n.storage.group(src.id).view
        return v.applied >= src.merge_index and v.shard == src
