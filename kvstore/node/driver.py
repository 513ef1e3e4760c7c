"""The node driver: one asyncio task owns every consensus core of the node.

Rules this module keeps:
- A core is only touched from the driver task, and never between ``ready()`` and
  ``advance()`` except for ``apply_conf_change`` of that Ready's committed entries.
- Each loop iteration: feed inputs (messages, ticks, proposals, reads), collect one Ready
  per group, persist all of them in ONE storage write transaction on the single writer
  thread (save + apply = one fsync, group commit across groups), then send the messages,
  then answer clients, then advance.
- Client commands that arrive while a Ready is being persisted queue up and are proposed
  as ONE log entry (encode_batch) in the next iteration: batching is the throughput plan.
- A write is answered when the entry at its ProposalId's index applies with the same
  term; another term there means the proposal was lost (definite, retryable).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import random
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kvstore.consensus import new_core
from kvstore.consensus.types import (
    ConfChange,
    Config,
    ConfState,
    ConsensusError,
    Entry,
    EntryType,
    Message,
    NotLeaderError,
    ProposalDroppedError,
    ProposalId,
    Ready,
    Role,
    Status,
)
from kvstore.node import log
from kvstore.node.errors import (
    ExhaustedOp,
    InvalidOp,
    NotLeaderOp,
    OpError,
    UnavailableOp,
)
from kvstore.node.feedback import TransportFeedback
from kvstore.node.members import address_change
from kvstore.node.metrics import NodeMetrics
from kvstore.node.pending import AdminProposal as _AdminProposal
from kvstore.node.pending import Completion, Replies, pack_entries
from kvstore.node.pending import ConfProposal as _ConfProposal
from kvstore.node.pending import GroupState as _Group
from kvstore.node.pending import Inflight as _Inflight
from kvstore.node.pending import Waiter as _Waiter
from kvstore.node.pending import Write as _Write
from kvstore.node.pending import fail as _fail
from kvstore.node.pending import ok as _ok
from kvstore.node.persist import Plan as _Plan
from kvstore.node.persist import (
    ShardChanges,
    may_send_before_persist,
    needs_write,
    persist_plans,
)
from kvstore.node.quiesce import Quiescence
from kvstore.node.shards import (
    adopt_unknown,
    parent_led,
    propose_admin_entries,
    resolve_admin,
    snapshot_fits,
    start_created,
)
from kvstore.node.zombies import destroy_pending
from kvstore.statemachine import ApplyResult, Command, adds_data, encode_batch
from kvstore.storage import NodeStorage, StorageFullError

MAX_INBOX = 100_000
MAX_ENTRY_BYTES = 4 << 20
MAX_ENTRY_OPS = 4096
MAX_TICKS_PER_ITERATION = 2
"""A stalled loop does not replay all the ticks it missed (as Go's ticker drops ticks):
an overloaded node would otherwise start elections the moment it wakes up."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverConfig:
    node_id: int
    consensus: str = "raft"
    groups: tuple[int, ...] = (1,)
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    snapshot_entries: int = 10000
    """Compact the log after this many applied entries (lagging nodes get a snapshot)."""
    causal_wait_s: float = 1.0
    unsafe_ack_before_commit: bool = False
    inline_persist: bool = False
    """Persist on the event loop thread instead of the writer thread: saves two thread
    hand-offs per Ready (which cost most on an overloaded machine) but blocks the loop
    for the fsync. Off by default."""
    sharded: bool = False
    """Groups own the ranges their shard descriptors give (docs/sharding.md); a split
    applied in a group's log starts the new group here."""


class NodeDriver:
    def __init__(
        self,
        config: DriverConfig,
        storage: NodeStorage,
        metrics: NodeMetrics,
        *,
        endpoints: dict[int, str],
    ) -> None:
        self.config = config
        self.storage = storage
        self.metrics = metrics
        self.endpoints = endpoints
        self.send: Callable[[list[Message]], None] = lambda msgs: None
        self.on_fatal: Callable[[BaseException], None] = lambda e: None
        self.on_member_address: Callable[[int, str], None] = lambda node, address: None
        self._next_usage = 0.0
        self._replies = Replies()
        """Answers of the last Ready, sent once the next persist is under way (so the
        per-op reply work overlaps the next fsync instead of delaying it)."""
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-writer")
        self._inbox: list[Message] = []
        self.feedback = TransportFeedback(self._poke)
        self._ticks = 0
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._ctx = itertools.count(1)
        self._ctx_prefix = config.node_id.to_bytes(8, "big") + os.urandom(8)
        self._seq = itertools.count()
        self._stopped = False
        self.storage_full = False
        self.groups: dict[int, _Group] = {}
        self.on_shards_changed: Callable[[], None] = lambda: None
        """Called after a persist that may have changed a shard (the router rebuilds)."""
        self._seed = int.from_bytes(os.urandom(8), "big")
        self._destroy: set[int] = set()
        """Zombie replicas to destroy at the start of the next iteration (zombies.py)."""
        self.quiesce = Quiescence(config.sharded)
        """Idle groups of a sharded node stop ticking (quiesce.py)."""
        for g in config.groups:
            self.groups[g] = self._make_group(g)
        if config.unsafe_ack_before_commit:
            log.event(
                "UNSAFE_ACK_BEFORE_COMMIT",
                level=40,
                warning="writes are acknowledged before they commit; test-only, loses data",
            )

    def _make_group(self, g: int) -> _Group:
        """The in-memory side of group ``g`` from its durable state."""
        glog = self.storage.group(g)
        applied = self.storage.kv(g).applied_index()
        cfg = Config(
            id=self.config.node_id,
            group=g,
            election_tick=self.config.election_ticks,
            heartbeat_tick=self.config.heartbeat_ticks,
            applied=applied,
            rng=random.Random(self._seed ^ g),
        )
        core = new_core(self.config.consensus, cfg, glog)
        hs, _ = glog.initial_state()
        return _Group(
            id=g,
            core=core,
            applied=applied,
            compacted=glog.first_index() - 1,
            term=hs.term,
            persisted_term=hs.term,
            persisted_vote=hs.vote,
        )

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="driver")
        self._ticker = asyncio.create_task(self._tick_loop(), name="ticker")

    async def stop(self) -> None:
        self._stopped = True
        for t in (self._ticker, self._task):
            if t is not None:
                t.cancel()
        for t in (self._ticker, self._task):
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        self._writer.shutdown(wait=True)
        self._replies.flush()
        err = UnavailableOp("node is shutting down", definite=False)
        for g in self.groups.values():
            g.fail_all(err)

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _tick_loop(self) -> None:
        period = self.config.tick_ms / 1000
        loop = asyncio.get_running_loop()
        next_at = loop.time() + period
        while True:
            await asyncio.sleep(max(next_at - loop.time(), 0))
            next_at = max(next_at + period, loop.time())
            self._ticks += 1
            self._poke()

    # -- inputs (event loop, any task) -------------------------------------------
    def deliver(self, msgs: list[Message]) -> None:
        if len(self._inbox) + len(msgs) > MAX_INBOX:
            # A stalled loop (storage full) must not buffer without bound; consensus
            # tolerates the loss (the senders retry).
            for m in msgs:
                self.metrics.dropped.labels(str(m.group), "inbox_full").inc()
            return
        self._inbox.extend(msgs)
        self._poke()

    def _group(self, group: int) -> _Group:
        g = self.groups.get(group)
        if g is None:
            raise UnavailableOp(f"group {group} is not hosted here", definite=True)
        return g

    def not_leader(self, g: _Group) -> NotLeaderOp:
        return NotLeaderOp(
            f"node {self.config.node_id} is not the leader of group {g.id}"
            + (f"; leader is {g.leader}" if g.leader else "; no leader known"),
            definite=True,
            leader_id=g.leader,
            leader_endpoint=self.endpoints.get(g.leader, ""),
        )

    def propose(
        self,
        group: int,
        cmd: Command,
        timeout: float,
        fut: Completion[ApplyResult] | None = None,
    ) -> Completion[ApplyResult]:
        """Queue one command; ``fut`` (a new asyncio.Future if None) completes with its
        ApplyResult or an OpError."""
        g = self._group(group)
        loop = self._loop or asyncio.get_running_loop()
        if fut is None:
            fut = loop.create_future()
        if g.role != Role.LEADER:
            fut.set_exception(self.not_leader(g))
        elif self.storage_full:
            fut.set_exception(ExhaustedOp("storage is full", definite=True))
        elif self.storage.tight and adds_data(cmd):
            fut.set_exception(
                ExhaustedOp(
                    f"storage is full to its high-water mark ({self.storage.live} bytes "
                    f"held, mark {self.storage.high_water}; the rest of the map is kept for "
                    "deletes): writes that add data are refused, deletes still apply",
                    definite=True,
                )
            )
        else:
            now = loop.time()
            g.writes.append(_Write(cmd, fut, now + timeout, now))
            self._poke()
        return fut

    def read_barrier(
        self,
        group: int,
        mode: str,
        token: int,
        timeout: float,
        fut: Completion[int] | None = None,
    ) -> Completion[int]:
        """Completes with the applied index once a read in ``mode`` may be served."""
        g = self._group(group)
        loop = self._loop or asyncio.get_running_loop()
        if fut is None:
            fut = loop.create_future()
        now = loop.time()
        if mode == "eventual" or (mode == "causal" and g.applied >= token):
            fut.set_result(g.applied)
        elif mode == "causal":
            w = _Waiter(fut, now + min(timeout, self.config.causal_wait_s))
            heapq.heappush(g.applied_waiters, (token, next(self._seq), w))
        else:
            if g.leader == 0:
                fut.set_exception(self.not_leader(g))
            else:
                g.reads.append(_Waiter(fut, now + timeout))
                self._poke()
        return fut

    def propose_conf_change(
        self, group: int, change: ConfChange, timeout: float
    ) -> asyncio.Future[int]:
        g = self._group(group)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        if g.role != Role.LEADER:
            fut.set_exception(self.not_leader(g))
        else:
            g.confs.append(_ConfProposal(change, fut, loop.time() + timeout))
            self._poke()
        return fut

    def propose_admin(self, group: int, data: bytes, timeout: float) -> asyncio.Future[int]:
        """Propose one admin command (kvstore.shard.commands) as its own log entry; the
        future completes with its apply result (shard.commands) or an OpError."""
        g = self._group(group)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        if g.role != Role.LEADER:
            fut.set_exception(self.not_leader(g))
        elif self.storage_full:
            fut.set_exception(ExhaustedOp("storage is full", definite=True))
        else:
            g.admin.append(_AdminProposal(data, fut, loop.time() + timeout))
            self._poke()
        return fut

    def transfer_leadership(self, group: int, to: int) -> None:
        g = self._group(group)
        if g.role != Role.LEADER:
            raise self.not_leader(g)
        g.core.transfer_leadership(to)
        self._poke()

    def destroy_replica(self, group: int) -> None:
        """Destroy this node's replica of ``group`` (a zombie) between two persists."""
        self._destroy.add(group)
        self._poke()

    def status(self, group: int, *, progress: bool = False) -> Status:
        return self._group(group).core.status(progress=progress)

    # -- the loop ------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._wake is not None
        try:
            while not self._stopped:
                await self._wake.wait()
                self._wake.clear()
                if await self._iteration():
                    self._wake.set()
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            # A bug: the cores' state can no longer be trusted. Say so and let the
            # process end (a supervisor restarts it from its durable state).
            log.event(
                "driver_crashed",
                level=50,
                error=repr(e),
                traceback=traceback.format_exc().replace("\n", " | "),
            )
            self.on_fatal(e)
            raise

    async def _iteration(self) -> bool:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._destroy:
            destroy_pending(self, self._destroy)
        inbox, self._inbox = self._inbox, []
        ticks, self._ticks = min(self._ticks, MAX_TICKS_PER_ITERATION), 0
        self.quiesce.now += ticks
        self._step_inbox(inbox)
        self.feedback.report({gid: g.core for gid, g in self.groups.items()})
        for g in self.groups.values():
            if ticks and self.quiesce.should_tick(g):
                for _ in range(ticks):
                    g.core.tick()
            self._propose_writes(g)
            self._propose_confs(g)
            if g.admin:
                propose_admin_entries(g, self.not_leader)
            self._start_reads(g)
            if ticks:
                g.expire(now)
                g.export_drops(self.metrics)
        if ticks and now >= self._next_usage:
            self._next_usage = now + 1.0
            used, cap = self.storage.usage()
            self.metrics.storage_used.set(used)
            self.metrics.storage_cap.set(cap)
        readies: list[tuple[_Group, Ready]] = []
        for g in self.groups.values():
            if g.core.has_ready():
                rd = g.core.ready()
                self.quiesce.on_ready(g.id, rd)
                readies.append((g, rd))
        if not readies:
            self._replies.flush()
            return False
        plans = [self._plan(g, rd) for g, rd in readies]
        early: list[Message] = []
        out: list[Message] = []
        for g, rd in readies:
            if may_send_before_persist(g.role, g.persisted_term, g.persisted_vote, rd):
                early.extend(rd.messages)
            else:
                out.extend(rd.messages)
        if early:
            self.send(early)
        results: dict[int, list[ApplyResult]] = {}
        shards = ShardChanges()
        if any(needs_write(p) for p in plans):
            results = await self._persist_until_done(plans, shards)
        else:
            self._replies.flush()
        if out:
            self.send(out)
        for g, rd in readies:
            self._after_persist(g, rd, results.get(g.id, []))
            if g.admin_inflight and rd.committed:
                done = shards.admin_results.get(g.id, {})
                resolve_admin(g, rd.committed, done, self._replies.defer)
        for g, rd in readies:
            g.core.advance(rd)
        if shards.changed:
            for gid, parent in start_created(self, shards):
                self.groups[gid] = self._make_group(gid)
                log.event("shard_started", group=gid, parent=parent)
                if parent_led(self, parent):
                    # Every member applies the same split: no election timeout to wait.
                    self.groups[gid].core.campaign()
            self._poke()
            self.on_shards_changed()
        return True

    def _plan(self, g: _Group, rd: Ready) -> _Plan:
        # Conf changes take effect in the core now, before the persist, so the membership
        # the storage records in this transaction is the one after these entries.
        cs: ConfState | None = None
        addresses: dict[int, str] = {}
        for e in rd.committed:
            if e.type == EntryType.CONF_CHANGE:
                cc = ConfChange.decode(e.data)
                cs = g.core.apply_conf_change(cc)
                log.event(
                    "conf_change_applied", group=g.id, index=e.index, voters=sorted(cs.voters)
                )
                for part in cc.singles():  # a joint change adds and removes several
                    address = address_change(part, cs)
                    if address is not None:
                        addresses[part.node_id] = address
                        self._learn_address(part.node_id, address)
        applied = g.applied
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            applied = max(applied, rd.snapshot.metadata.index)
        if rd.committed:
            applied = max(applied, rd.committed[-1].index)
        compact_to = 0
        n = self.config.snapshot_entries
        if n > 0 and applied - g.compacted >= n:
            # Keep a tail so briefly lagging followers still catch up from the log.
            compact_to = applied - n // 4
        if self.storage.tight and applied > g.compacted:
            # Nearly full: the log's old entries may hold most of the data; followers
            # that lag will need a snapshot.
            compact_to = applied
        return _Plan(group=g.id, rd=rd, compact_to=compact_to, conf_state=cs, addresses=addresses)

    def _learn_address(self, node: int, address: str) -> None:
        """A member's address from the log or a snapshot: reach it there from now on."""
        if address and self.endpoints.get(node) != address:
            log.event("member_address", node=node, address=address)
            self.endpoints[node] = address
            self.on_member_address(node, address)

    async def _persist_until_done(
        self, plans: list[_Plan], shards: ShardChanges
    ) -> dict[int, list[ApplyResult]]:
        """Persist, retrying the same Ready while the storage is full: the core already
        handed it out, so it must land before anything else. Meanwhile writes are refused
        with RESOURCE_EXHAUSTED and, with no heartbeats leaving, a leader loses its role."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self.config.inline_persist:
                    results = persist_plans(self.storage, self.metrics, plans, shards)
                    self._replies.flush()
                else:
                    fut = loop.run_in_executor(
                        self._writer, persist_plans, self.storage, self.metrics, plans, shards
                    )
                    self._replies.flush()
                    if self.config.consensus == "raft":
                        await self._step_while(fut)
                    results = await fut
            except StorageFullError as e:
                if not self.storage_full:
                    self.storage_full = True
                    log.event("storage_full", level=40, error=str(e))
                    for g in self.groups.values():
                        g.fail_writes(f"storage is full: {e}")
                for p in plans:
                    # The retry also drops the applied log: that may be what makes room.
                    grp = self.groups.get(p.group)
                    if grp is not None and grp.applied > grp.compacted:
                        p.compact_to = max(p.compact_to, grp.applied)
                await asyncio.sleep(1.0)
                continue
            if self.storage_full:
                self.storage_full = False
                log.event("storage_writable")
            return results

    async def _step_while(self, fut: asyncio.Future[Any]) -> None:
        """While the writer thread persists, step arriving peer messages into the cores
        (etcd-io/raft allows Step between Ready and Advance), so follower acks and
        heartbeats are not left waiting for the fsync. Proposals keep queueing: they go
        out as one entry in the next iteration (batching)."""
        assert self._wake is not None
        wake = self._wake
        fut.add_done_callback(lambda _: wake.set())
        while not fut.done():
            await wake.wait()
            wake.clear()
            if self._inbox:
                inbox, self._inbox = self._inbox, []
                self._step_inbox(inbox)
        wake.set()  # ticks, proposals and reads that arrived meanwhile

    def _step_inbox(self, inbox: list[Message]) -> None:
        for m in inbox:
            g = self.groups.get(m.group)
            if g is None and self.config.sharded:
                g = adopt_unknown(self, m)
                if g is not None:
                    g.core.step(m)
                    continue
            if g is None:
                self.metrics.dropped.labels(str(m.group), "unknown_group").inc()
                continue
            self.quiesce.on_message(m)
            if m.snapshot is not None and self.config.sharded and not snapshot_fits(self, m):
                self.metrics.dropped.labels(str(m.group), "snapshot_overlaps").inc()
                continue
            g.core.step(m)

    # -- proposals -------------------------------------------------------------------
    def _propose_writes(self, g: _Group) -> None:
        if not g.writes:
            return
        writes, g.writes = g.writes, []
        if g.role != Role.LEADER:
            refused = self.not_leader(g)
            for w in writes:
                _fail(w.fut, refused)
            return
        # The wall clock stamped into the entry is the state machine's only time (session
        # expiry); replicas take it from the log, never from their own clocks.
        now_ms = time.time_ns() // 1_000_000
        for chunk in pack_entries(writes, MAX_ENTRY_OPS, MAX_ENTRY_BYTES):
            try:
                pid = g.core.propose(encode_batch([w.cmd for w in chunk], now_ms))
            except (NotLeaderError, ProposalDroppedError) as e:
                lost: OpError = (
                    self.not_leader(g)
                    if isinstance(e, NotLeaderError)
                    else UnavailableOp(f"proposal dropped: {e}", definite=True)
                )
                for w in chunk:
                    _fail(w.fut, lost)
                continue
            self.metrics.batch_ops.observe(len(chunk))
            deadline = max(w.deadline for w in chunk)
            older = g.inflight.get(pid.index)
            if older is not None:
                # Our own earlier entry at this index was truncated away: it never commits.
                lost_old = UnavailableOp("proposal lost: its log entry was replaced", definite=True)
                for w in older.writes:
                    _fail(w.fut, lost_old)
            g.inflight[pid.index] = _Inflight(pid.term, chunk, deadline)
            if self.config.unsafe_ack_before_commit:
                self._unsafe_ack(pid, chunk)

    def _unsafe_ack(self, pid: ProposalId, chunk: list[_Write]) -> None:
        for w in chunk:
            if not w.fut.done():
                w.fut.set_result(ApplyResult(pid.index, pid.index, True, None, None))

    def _propose_confs(self, g: _Group) -> None:
        confs, g.confs = g.confs, []
        for c in confs:
            try:
                pid = g.core.propose_conf_change(c.change)
            except NotLeaderError:
                _fail(c.fut, self.not_leader(g))
                continue
            except ProposalDroppedError as e:
                _fail(c.fut, UnavailableOp(f"conf change dropped: {e}", definite=True))
                continue
            except ConsensusError as e:  # the core's own checks (e.g. already a learner)
                _fail(c.fut, InvalidOp(f"conf change refused: {e}", definite=True))
                continue
            g.conf_inflight[pid.index] = (pid.term, c)

    def _start_reads(self, g: _Group) -> None:
        if not g.reads:
            return
        reads, g.reads = g.reads, []
        # Read contexts must be unique cluster-wide and across restarts: the leader keys
        # pending reads by ctx, and a duplicate would be answered with the read index of
        # an earlier request (a stale read). Node id + per-process nonce + counter.
        ctx = self._ctx_prefix + next(self._ctx).to_bytes(8, "big")
        try:
            g.core.read_index(ctx)
        except NotLeaderError:
            err = self.not_leader(g)
            for r in reads:
                _fail(r.fut, err)
            return
        g.read_ctx[ctx] = reads

    # -- after the persist -----------------------------------------------------------
    def _after_persist(self, g: _Group, rd: Ready, results: list[ApplyResult]) -> None:
        leadership_changed = rd.soft_state is not None and self._on_soft_state(
            g, rd.soft_state.leader, rd.soft_state.role
        )
        if rd.hard_state is not None:
            g.term = g.persisted_term = rd.hard_state.term
            g.persisted_vote = rd.hard_state.vote
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            for node, address in self.storage.group(g.id).member_addresses().items():
                self._learn_address(node, address)
            snap_index = rd.snapshot.metadata.index
            g.applied = max(g.applied, snap_index)
            g.compacted = max(g.compacted, snap_index)
            for idx in [i for i in g.inflight if i <= snap_index]:
                for w in g.inflight.pop(idx).writes:
                    _fail(w.fut, UnavailableOp("replaced by a snapshot", definite=False))
        if rd.committed:
            self._resolve_writes(g, rd.committed, results)
            g.applied = max(g.applied, rd.committed[-1].index)
        for rs in rd.read_states:
            for r in g.read_ctx.pop(rs.request_ctx, []):
                if g.applied >= rs.index:
                    self._replies.defer(r.fut, g.applied)
                else:
                    heapq.heappush(g.applied_waiters, (rs.index, next(self._seq), r))
        while g.applied_waiters and g.applied_waiters[0][0] <= g.applied:
            self._replies.defer(heapq.heappop(g.applied_waiters)[2].fut, g.applied)
        if leadership_changed:
            g.fail_unconfirmed_reads(self.not_leader(g))
        st = None
        if rd.hard_state is not None or rd.committed:
            st = g.core.status()
            self.metrics.term.labels(str(g.id)).set(st.term)
            self.metrics.commit.labels(str(g.id)).set(st.commit)
            self.metrics.applied.labels(str(g.id)).set(g.applied)
        if st is not None and g.compacted < st.applied:
            g.compacted = max(g.compacted, self.storage.group(g.id).first_index() - 1)

    def _on_soft_state(self, g: _Group, leader: int, role: Role) -> bool:
        """Record the new leader/role; True when either changed."""
        changed = leader != g.leader or role != g.role
        if leader != g.leader:
            self.metrics.leader_changes.labels(str(g.id)).inc()
            log.event("leader_changed", group=g.id, leader=leader, role=role.name.lower())
        g.leader = leader
        if role != g.role:
            log.event("role_changed", group=g.id, role=role.name.lower(), leader=leader)
        g.role = role
        self.metrics.is_leader.labels(str(g.id)).set(1 if role == Role.LEADER else 0)
        if role != Role.LEADER and g.writes:
            err = self.not_leader(g)
            for w in g.writes:
                _fail(w.fut, err)
            g.writes = []
        return changed

    def _resolve_writes(
        self, g: _Group, committed: tuple[Entry, ...], results: list[ApplyResult]
    ) -> None:
        by_index: dict[int, list[ApplyResult]] = {}
        for r in results:
            by_index.setdefault(r.index, []).append(r)
        now = asyncio.get_running_loop().time()
        hist = self.metrics.proposal_latency.labels(str(g.id))
        for e in committed:
            conf = g.conf_inflight.pop(e.index, None)
            if conf is not None:
                if conf[0] == e.term:
                    _ok(conf[1].fut, e.index)
                else:
                    _fail(conf[1].fut, UnavailableOp("conf change lost", definite=True))
            inf = g.inflight.pop(e.index, None)
            if inf is None:
                continue
            if inf.term != e.term:
                err = UnavailableOp(
                    f"proposal lost: index {e.index} holds term {e.term}, not {inf.term}",
                    definite=True,
                )
                for w in inf.writes:
                    _fail(w.fut, err)
                continue
            rs = by_index.get(e.index, [])
            if len(rs) != len(inf.writes):  # shifted answers lie (jepsen r7): say "unknown"
                rs = []
            for i, w in enumerate(inf.writes):
                if i < len(rs):
                    hist.observe(now - w.queued_at)
                    self._replies.defer(w.fut, rs[i])
                else:
                    _fail(w.fut, UnavailableOp("no apply result", definite=False))
