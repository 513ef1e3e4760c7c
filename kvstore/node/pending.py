"""What the driver keeps per consensus group while requests wait: queued and in-flight
writes, read waiters, conf changes, and the completions that answer them.

Rule: every waiter is completed exactly once (``ok``/``fail`` ignore a done one), and
nothing here talks to a core, the storage or the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from kvstore.consensus.types import ConfChange, Core, Role
from kvstore.node import log
from kvstore.node.errors import DeadlineOp, ExhaustedOp, InternalOp, OpError, UnavailableOp
from kvstore.node.hlc import GroupTime
from kvstore.node.log_bytes import LogBytes
from kvstore.node.logclock import LogClock
from kvstore.node.metrics import NodeMetrics
from kvstore.statemachine import ApplyResult, Command

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class Completion(Protocol[T_contra]):
    """What the driver completes: an asyncio.Future, or a Callback (cheaper per op)."""

    def done(self) -> bool: ...

    def set_result(self, result: T_contra, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class Callback(Generic[T]):
    """A one-shot completion that calls ``fn(result, error)`` synchronously, at once.

    The batch stream answers thousands of ops a second; an asyncio.Future per op would
    cost an event-loop callback each. ``fn`` should not raise; if it does with a result,
    it is called once more with an InternalOp so that the request still gets an answer."""

    __slots__ = ("_done", "_fn")

    def __init__(self, fn: Callable[[T | None, OpError | None], None]) -> None:
        self._fn = fn
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: T, /) -> None:
        self._fire(result, None)

    def set_exception(self, exception: BaseException, /) -> None:
        if not isinstance(exception, OpError):
            exception = InternalOp(f"internal error: {exception!r}", definite=False)
        self._fire(None, exception)

    def _fire(self, result: T | None, error: OpError | None) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._fn(result, error)
        except Exception as e:  # a broken reply path must not stop the driver
            log.event("reply_callback_failed", level=40, error=repr(e))
            if error is None:
                with contextlib.suppress(Exception):
                    self._fn(None, InternalOp(f"internal error: {e!r}", definite=False))


@dataclass(slots=True)
class Write:
    cmd: Command
    fut: Completion[ApplyResult]
    deadline: float
    queued_at: float


@dataclass(slots=True)
class Inflight:
    term: int
    writes: list[Write]
    deadline: float


@dataclass(slots=True)
class Waiter:
    """A read waiting for a read index confirmation or for an index to apply."""

    fut: Completion[int]
    deadline: float


@dataclass(slots=True)
class ConfProposal:
    change: ConfChange
    fut: asyncio.Future[int]
    deadline: float


@dataclass(slots=True)
class AdminProposal:
    """An admin command (kvstore.shard.commands) for the group's log; completes with its
    apply result."""

    data: bytes
    fut: asyncio.Future[int]
    deadline: float


@dataclass(slots=True)
class GroupState:
    id: int
    core: Core
    applied: int
    compacted: int
    role: Role = Role.FOLLOWER
    leader: int = 0
    term: int = 0
    persisted_term: int = 0
    persisted_vote: int = 0
    writes: list[Write] = field(default_factory=list)
    inflight: dict[int, Inflight] = field(default_factory=dict)
    reads: list[Waiter] = field(default_factory=list)
    read_ctx: dict[bytes, list[Waiter]] = field(default_factory=dict)
    applied_waiters: list[tuple[int, int, Waiter]] = field(default_factory=list)
    confs: list[ConfProposal] = field(default_factory=list)
    conf_inflight: dict[int, tuple[int, ConfProposal]] = field(default_factory=dict)
    admin: list[AdminProposal] = field(default_factory=list)
    admin_inflight: dict[int, tuple[int, AdminProposal]] = field(default_factory=dict)
    drops_seen: dict[str, int] = field(default_factory=dict)
    time: GroupTime = field(default_factory=GroupTime)
    log_bytes: LogBytes = field(default_factory=LogBytes)
    """Bytes of the stored log above ``compacted`` (compaction by size, log_bytes.py)."""
    """Causal time: the applied time and the reads waiting for it (hlc.py)."""
    log_clock: LogClock = field(default_factory=LogClock)
    """Log time: what a leader stamps as its entries' time_ms (logclock.py)."""
    vote_from: tuple[int, int] = (0, 0)
    """(term, index) of the last entry a destroyed earlier replica of the group here
    stored: this replica's log must reach it before it campaigns (storage/tombstone.py
    covers; index 0: none)."""

    def export_drops(self, metrics: NodeMetrics) -> None:
        """Mirror the core's drop counters (stale term, unknown sender ...) into metrics."""
        for reason, n in self.core.dropped.items():
            seen = self.drops_seen.get(reason, 0)
            if n > seen:
                metrics.dropped.labels(metrics.shard(self.id), reason).inc(n - seen)
                self.drops_seen[reason] = n

    def fail_writes(self, why: str) -> None:
        for w in self.writes:
            fail(w.fut, ExhaustedOp(why, definite=True))
        self.writes = []
        for inf in self.inflight.values():
            for w in inf.writes:
                fail(w.fut, ExhaustedOp(why, definite=False))
        self.inflight.clear()

    def expire(self, now: float) -> None:
        def late(dl: float) -> bool:
            return dl <= now

        for idx in [i for i, f in self.inflight.items() if late(f.deadline)]:
            for w in self.inflight.pop(idx).writes:
                fail(w.fut, DeadlineOp("write not committed in time", definite=False))
        for ctx in [c for c, rs in self.read_ctx.items() if all(late(r.deadline) for r in rs)]:
            for r in self.read_ctx.pop(ctx):
                fail(r.fut, DeadlineOp("read index not confirmed in time", definite=True))
        if self.applied_waiters and any(late(w.deadline) for _, _, w in self.applied_waiters):
            keep = []
            for item in self.applied_waiters:
                if late(item[2].deadline):
                    fail(
                        item[2].fut,
                        UnavailableOp(
                            f"replica applied {self.applied} < requested index {item[0]}",
                            definite=True,
                        ),
                    )
                else:
                    keep.append(item)
            heapq.heapify(keep)
            self.applied_waiters = keep
        self.time.expire(
            now,
            lambda w, t: fail(
                w.fut,
                UnavailableOp(
                    f"replica's applied time {self.time.applied} < causal token {t}",
                    definite=True,
                ),
            ),
        )
        for idx in [i for i, (_, c) in self.conf_inflight.items() if late(c.deadline)]:
            fail(
                self.conf_inflight.pop(idx)[1].fut,
                DeadlineOp("conf change timed out", definite=False),
            )
        for idx in [i for i, (_, a) in self.admin_inflight.items() if late(a.deadline)]:
            fail(
                self.admin_inflight.pop(idx)[1].fut,
                DeadlineOp("admin command timed out", definite=False),
            )

    def fail_unconfirmed_reads(self, err: OpError) -> None:
        """After a leader change, read-index requests not yet confirmed will never be:
        the old leader's pending reads died with its term. Redirect them now instead of
        letting them wait for their deadline (reads have no effect: definite)."""
        if not self.read_ctx:
            return
        for rs in self.read_ctx.values():
            for r in rs:
                fail(r.fut, err)
        self.read_ctx.clear()

    def fail_all(self, err: OpError) -> None:
        for w in self.writes:
            fail(w.fut, err)
        self.writes = []
        for inf in self.inflight.values():
            for w in inf.writes:
                fail(w.fut, err)
        self.inflight.clear()
        for rs in self.read_ctx.values():
            for r in rs:
                fail(r.fut, err)
        self.read_ctx.clear()
        for r in self.reads:
            fail(r.fut, err)
        self.reads = []
        for _, _, w2 in self.applied_waiters:
            fail(w2.fut, err)
        self.applied_waiters = []
        for _, _, w3 in self.time.waiters:
            fail(w3.fut, err)
        self.time.waiters = []
        for a in self.admin:
            fail(a.fut, err)
        self.admin = []
        for _, a in self.admin_inflight.values():
            fail(a.fut, err)
        self.admin_inflight.clear()


def ok(fut: Completion[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def fail(fut: Completion[Any], err: Exception) -> None:
    if not fut.done():
        fut.set_exception(err)


class Replies:
    """Answers held back until the next persist is under way, so the per-op reply work
    overlaps the fsync instead of delaying it."""

    def __init__(self) -> None:
        self._held: list[tuple[Completion[Any], Any]] = []

    def defer(self, fut: Completion[Any], value: Any) -> None:
        """Complete ``fut`` with ``value`` (an exception fails it) at the next flush."""
        self._held.append((fut, value))

    def flush(self) -> None:
        held, self._held = self._held, []
        for fut, value in held:
            if isinstance(value, Exception):
                fail(fut, value)
            else:
                ok(fut, value)


def pack_entries(writes: list[Write], max_ops: int, max_bytes: int) -> list[list[Write]]:
    """Split queued writes, in order, into log entries of at most ``max_ops`` commands and
    about ``max_bytes`` (one oversize command still gets an entry); drops answered ones."""
    out: list[list[Write]] = []
    chunk: list[Write] = []
    size = 0
    for w in writes:
        s = _cmd_size(w.cmd)
        if chunk and (len(chunk) >= max_ops or size + s > max_bytes):
            out.append(chunk)
            chunk, size = [], 0
        if not w.fut.done():
            chunk.append(w)
            size += s
    if chunk:
        out.append(chunk)
    return out


def _cmd_size(cmd: Command) -> int:
    n = 32 + len(cmd.key)
    value = getattr(cmd, "value", None) or getattr(cmd, "new_value", None)
    return n + (len(value) if value else 0)
