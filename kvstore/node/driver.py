"""The node driver: one asyncio task owns every consensus core of the node.

Rules this module keeps:
- A core is only touched from the driver task, and never between ``ready()`` and
  ``advance()`` except for ``apply_conf_change`` of that Ready's committed entries.
- Each loop iteration: feed inputs (messages, ticks, proposals, reads), then run the
  replica loop (replica.py, shared with the simulation) over every group: ``begin``
  collects one Ready per group, this module persists all of them in ONE storage write
  transaction on the single writer thread (save + apply = one fsync, group commit across
  groups), ``finish`` sends, answers clients and advances.
- Client commands that arrive while a Ready is being persisted queue up and are proposed
  as ONE log entry (encode_batch) in the next iteration: batching is the throughput plan.
- What is the node's own stays here: the inbox and ticker, the writer thread and the
  storage-full retry, groups that start (splits, snapshots) or end (zombies).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import random
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kvstore.consensus import new_core
from kvstore.consensus.types import (
    ConfChange,
    Config,
    Message,
    MessageType,
    Role,
    Status,
)
from kvstore.node import log
from kvstore.node.errors import ExhaustedOp, NotLeaderOp, UnavailableOp
from kvstore.node.feedback import TransportFeedback
from kvstore.node.hlc import log_stamp
from kvstore.node.lifecycle import (
    after_persist,
    answer_stale_leader,
    may_vote,
    receive_unknown,
    snapshot_fits,
)
from kvstore.node.log_bytes import LogBytes
from kvstore.node.metrics import NodeMetrics
from kvstore.node.pending import AdminProposal as _AdminProposal
from kvstore.node.pending import Completion
from kvstore.node.pending import ConfProposal as _ConfProposal
from kvstore.node.pending import GroupState as _Group
from kvstore.node.pending import Waiter as _Waiter
from kvstore.node.pending import Write as _Write
from kvstore.node.persist import NodeStorageView, ShardChanges, needs_write, persist_plans
from kvstore.node.quiesce import Quiescence
from kvstore.node.replica import Batch, ReplicaLoop
from kvstore.node.shards import DriverReplicas, frozen_merge_source
from kvstore.node.zombies import destroy_pending
from kvstore.statemachine import ApplyResult, Command, adds_data
from kvstore.storage import NodeStorage, StorageFullError, tombstone

MAX_INBOX = 100_000
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
    snapshot_bytes: int = 32 << 20
    """... or once the applied entries since the last compaction hold this many bytes."""
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
        self.replica = ReplicaLoop(
            node_id=config.node_id,
            storage=NodeStorageView(storage),
            send=lambda msgs: self.send(msgs),
            clock=_LoopClock(),
            metrics=metrics,
            endpoints=endpoints,
            snapshot_entries=config.snapshot_entries,
            snapshot_bytes=config.snapshot_bytes,
            unsafe_ack_before_commit=config.unsafe_ack_before_commit,
            ctx_nonce=os.urandom(8),
            on_member_address=lambda node, address: self.on_member_address(node, address),
        )
        """The per-group Ready loop (replica.py), run here for every hosted group."""
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-writer")
        self._inbox: list[Message] = []
        self.feedback = TransportFeedback(self._poke)
        self._ticks = 0
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopped = False
        self.storage_full = False
        self.groups: dict[int, _Group] = {}
        self.on_applied: Callable[[Iterable[int]], None] = lambda groups: None
        """Called with the groups that applied entries, after their persist committed
        (watch streams wake; server/watch.py)."""
        self.on_shards_changed: Callable[[], None] = lambda: None
        """Called after a persist that may have changed a shard (the router rebuilds)."""
        self._seed = int.from_bytes(os.urandom(8), "big")
        self._destroy: set[int] = set()
        """Zombie replicas to destroy at the start of the next iteration (zombies.py)."""
        self.lifecycle = DriverReplicas(self)
        """The replica lifecycle's view of this node (lifecycle.py)."""
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
        group = _Group(
            id=g,
            core=core,
            applied=applied,
            compacted=glog.first_index() - 1,
            term=hs.term,
            persisted_term=hs.term,
            persisted_vote=hs.vote,
            log_bytes=LogBytes(glog.entry_sizes()),
        )
        self.metrics.host_shard(g)
        group.time.applied = self.storage.kv(g).applied_time()
        # The clock starts above every stamp in the log (a restarted leader too).
        self.replica.hlc.observe(max(group.time.applied, log_stamp(glog)))
        group.log_clock.observe(self.storage.kv(g).log_time())  # applied only: logclock.py
        group.vote_from = self.storage.tombstone_log(g)
        return group

    def short_of_tombstone(self, g: _Group) -> bool:
        """Is ``g`` a replica created again whose log is short of what the destroyed one
        stored? Such a replica neither campaigns (ticks, a leadership transfer, a split's
        campaign) nor votes (lifecycle.may_vote): a quorum of it and a lagging node could
        overwrite entries a quorum counting the destroyed replica committed."""
        if g.vote_from[1] and self.log_covers(g.id, g.vote_from):
            g.vote_from = (0, 0)
        return g.vote_from[1] > 0

    def log_covers(self, group: int, mark: tuple[int, int]) -> bool:
        """Does ``group``'s stored log reach ``mark`` (tombstone.covers: by (term, index)
        under Raft, by index under Multi-Paxos)?"""
        v = self.storage.group(group).view
        return tombstone.covers(
            v.last_term, v.last_index, mark, by_term=self.config.consensus == "raft"
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
        self.replica.replies.flush()
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
                self.metrics.dropped.labels(self.metrics.shard(m.group), "inbox_full").inc()
            return
        self._inbox.extend(msgs)
        self._poke()

    def _group(self, group: int) -> _Group:
        g = self.groups.get(group)
        if g is None:
            raise UnavailableOp(f"group {group} is not hosted here", definite=True)
        return g

    def not_leader(self, g: _Group) -> NotLeaderOp:
        return self.replica.not_leader(g)

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
                    "deletes): writes that add data are refused; deletes still apply, and "
                    "their values leave the disk once the history is compacted "
                    "(`kvstore compact`)",
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
        time: int = 0,
    ) -> Completion[int]:
        """Completes with the applied index once a read in ``mode`` may be served.
        ``time``: a causal read's hybrid clock token (hlc.py), replacing the index
        ``token`` when set."""
        g = self._group(group)
        loop = self._loop or asyncio.get_running_loop()
        if fut is None:
            fut = loop.create_future()
        now = loop.time()
        if mode == "causal" and time and not self.replica.acceptable_time(time):
            fut.set_exception(self.replica.time_refusal(time))
        elif mode == "eventual" or (
            mode == "causal" and (g.time.applied >= time if time else g.applied >= token)
        ):
            fut.set_result(g.applied)
        elif mode == "causal" and time:
            w = _Waiter(fut, now + min(timeout, self.config.causal_wait_s))
            self.replica.wait_for_time(g, time, w)
            self._poke()
        elif mode == "causal":
            w = _Waiter(fut, now + min(timeout, self.config.causal_wait_s))
            heapq.heappush(g.applied_waiters, (token, next(self.replica.seq), w))
        else:
            if g.leader == 0:
                fut.set_exception(self.not_leader(g))
            else:
                g.reads.append(_Waiter(fut, now + timeout))
                self._poke()
        return fut

    def observe_time(self, t: int) -> None:
        """A write's causal token: its entry is stamped above it (hlc.py). Raises
        InvalidOp for a time no node can have handed out (hlc.MAX_AHEAD_MS)."""
        if not self.replica.acceptable_time(t):
            raise self.replica.time_refusal(t)
        self.replica.hlc.observe(t)

    def propose_conf_change(
        self, group: int, change: ConfChange, timeout: float
    ) -> asyncio.Future[int]:
        g = self._group(group)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        frozen = frozen_merge_source(self, group) if self.config.sharded else None
        if g.role != Role.LEADER:
            fut.set_exception(self.not_leader(g))
        elif frozen is not None:
            fut.set_exception(frozen)
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
            if ticks and self.quiesce.should_tick(g) and not self.short_of_tombstone(g):
                for _ in range(ticks):
                    g.core.tick()
            self.replica.propose_queued(g)
            if ticks:
                g.expire(now)
                g.export_drops(self.metrics)
        if ticks and now >= self._next_usage:
            self._next_usage = now + 1.0
            used, cap = self.storage.usage()
            self.metrics.storage_used.set(used)
            self.metrics.storage_cap.set(cap)
        batch = self.replica.begin(self.groups.values())
        if batch is None:
            self.replica.replies.flush()
            return False
        for g, rd in batch.readies:
            self.quiesce.on_ready(g.id, rd)
        results: dict[int, list[ApplyResult]] = {}
        shards = ShardChanges()
        if any(needs_write(p) for p in batch.plans):
            results = await self._persist_until_done(batch, shards)
        else:
            self.replica.replies.flush()
        self.replica.finish(batch, results, shards.admin_results)
        self.replica.advance(batch)
        if results:
            self.on_applied(results)
        if shards.changed:
            after_persist(self.lifecycle, shards)
            self._poke()
            self.on_shards_changed()
        return True

    async def _persist_until_done(
        self, batch: Batch, shards: ShardChanges
    ) -> dict[int, list[ApplyResult]]:
        """Persist, retrying the same Ready while the storage is full: the core already
        handed it out, so it must land before anything else. Meanwhile writes are refused
        with RESOURCE_EXHAUSTED and, with no heartbeats leaving, a leader loses its role."""
        loop = asyncio.get_running_loop()
        plans = batch.plans

        def applied(results: dict[int, list[ApplyResult]]) -> None:
            # Writer thread, the transaction staged but not yet committed. A loop closed
            # meanwhile (the node stopping) must not abort the transaction.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.replica.answer_applied, batch, results)

        while True:
            try:
                if self.config.inline_persist:
                    results = persist_plans(self.storage, self.metrics, plans, shards)
                    self.replica.replies.flush()
                else:
                    fut = loop.run_in_executor(
                        self._writer,
                        persist_plans,
                        self.storage,
                        self.metrics,
                        plans,
                        shards,
                        applied,
                    )
                    self.replica.replies.flush()
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
            if g is None and self.config.sharded and receive_unknown(self.lifecycle, m):
                self.groups[m.group].core.step(m)  # a snapshot that started the replica
                continue
            if g is None:
                self.metrics.dropped.labels(self.metrics.shard(m.group), "unknown_group").inc()
                continue
            self.quiesce.on_message(m)
            if m.type == MessageType.TIME_REQUEST:
                self.replica.on_time_request(g, m)
                continue
            if (
                m.snapshot is not None
                and self.config.sharded
                and not snapshot_fits(self.lifecycle, m)
            ):
                self.metrics.dropped.labels(self.metrics.shard(m.group), "snapshot_overlaps").inc()
                continue
            if self.config.sharded and not may_vote(self.lifecycle, m):
                self.metrics.dropped.labels(self.metrics.shard(m.group), "vote_unfilled").inc()
                continue
            if m.type in CAMPAIGN_NOW and self.short_of_tombstone(g):
                self.metrics.dropped.labels(self.metrics.shard(m.group), "vote_unfilled").inc()
                continue
            if self.config.sharded:
                answer_stale_leader(self.lifecycle, m)
            g.core.step(m)


CAMPAIGN_NOW = frozenset({MessageType.TIMEOUT_NOW, MessageType.PAXOS_TIMEOUT_NOW})
"""A leadership transfer: the receiver campaigns at once."""


class _LoopClock:
    """The event loop's clock and the wall clock (replica.Clock)."""

    __slots__ = ()

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000
