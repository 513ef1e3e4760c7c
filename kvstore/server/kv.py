"""The client KV service (thin): checks input, hands commands to the driver, answers.

Rules: no consensus or storage logic here. Unary RPCs and the Batch stream share one
dispatch path, and every op it starts is answered exactly once: with its result, its
error, or INTERNAL when building the answer failed (a caller never waits for ever).
The stream (batch.py) answers ops in completion order, many per message, and an op's
error never ends it. Client work in flight is bounded per node (NodeBudget) and per
stream; scans that may be large are read and encoded off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio

from kvstore._pb import kv_pb2, kv_pb2_grpc
from kvstore.node import log
from kvstore.node.driver import NodeDriver
from kvstore.node.errors import DeadlineOp, InternalOp, InvalidOp, OpError, StaleRouteOp
from kvstore.node.lease_expiry import LeaseExpiry
from kvstore.node.limits import Limits, NodeBudget
from kvstore.node.metrics import NodeMetrics
from kvstore.node.pending import Callback
from kvstore.node.routing import LocalRouter
from kvstore.server import convert, history
from kvstore.server.batch import BatchCall, Sink
from kvstore.server.lease_ops import LeaseOps
from kvstore.server.watch import WatchService
from kvstore.statemachine import ApplyResult, Command
from kvstore.storage import NodeStorage
from kvstore.storage.history import Moved

DEFAULT_TIMEOUT = 10.0

INLINE_SCAN_ROWS = 100
"""Scans that may return more rows than this run on the scan threads: a 10,000-row scan
took 66 ms of decoding and encoding, all of it a stall of the event loop."""


class KVService(kv_pb2_grpc.KVServicer):
    def __init__(
        self,
        *,
        driver: NodeDriver,
        storage: NodeStorage,
        limits: Limits,
        metrics: NodeMetrics,
        node_id: int,
        budget: NodeBudget | None = None,
        router: LocalRouter | None = None,
        leases: LeaseExpiry | None = None,
    ) -> None:
        self.driver = driver
        self.router = router or LocalRouter(storage, False, lambda: driver.groups)
        self.storage = storage
        self.limits = limits
        self.metrics = metrics
        self.node_id = node_id
        self.budget = budget if budget is not None else NodeBudget(limits)
        self._counters: dict[tuple[str, int], Any] = {}
        self._last_header_key: tuple[int, int, int, int, int] | None = None
        self._last_header = kv_pb2.ResponseHeader()
        self._scans = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kv-scan")
        self.leases = LeaseOps(self, leases or LeaseExpiry(driver, storage))
        self.watches = WatchService(
            driver=driver,
            storage=storage,
            router=self.router,
            limits=limits,
            node_id=node_id,
            reads=self._scans,
        )
        driver.on_applied = self.watches.hub.notify

    def close(self) -> None:
        self._scans.shutdown(wait=True, cancel_futures=True)

    # -- dispatch -------------------------------------------------------------------
    def _header(self, group: int, index: int, time: int = -1) -> kv_pb2.ResponseHeader:
        """The header for answers at ``index`` and applied time ``time`` (-1: the
        group's now, which is at or above the time of any entry it applied: a write's
        answer); the ops of one entry share one."""
        g = self.driver.groups.get(group)
        term = g.term if g is not None else 0
        leader = g.leader if g is not None else 0
        if time < 0:
            time = g.time.applied if g is not None else 0
        key = (group, index, term, leader, time)
        if key != self._last_header_key:
            self._last_header = convert.header(group, self.node_id, term, index, leader)
            self._last_header.causal_time = time
            d = self.router.get(group)
            if d is not None:
                self._last_header.shard_version = d.epoch.version
            self._last_header_key = key
        return self._last_header

    def dispatch(self, op: kv_pb2.Op, sink: Sink) -> None:
        """Start one op; ``sink.emit`` is called exactly once with its OpResult."""
        timeout = op.timeout_ms / 1000 if op.timeout_ms else DEFAULT_TIMEOUT
        kind = op.WhichOneof("request")
        try:
            route = self.router
            if op.causal_time and kind in ("put", "delete", "cas"):
                self.driver.observe_time(op.causal_time)  # stamped after what it saw
            if kind == "put":
                cmd: Command = convert.put_command(op.put, self.limits)
                group = route.for_key(cmd.key, op.shard, op.shard_version)
                self._write(op.id, "put", cmd, op.put.prev_kv, timeout, sink, group)
            elif kind == "delete":
                cmd = convert.delete_command(op.delete, self.limits)
                group = route.for_key(cmd.key, op.shard, op.shard_version)
                self._write(op.id, "delete", cmd, True, timeout, sink, group)
            elif kind == "cas":
                cmd = convert.cas_command(op.cas, self.limits)
                group = route.for_key(cmd.key, op.shard, op.shard_version)
                self._write(op.id, "cas", cmd, True, timeout, sink, group)
            elif kind == "get":
                self.limits.check_key(op.get.key)
                group = route.for_key(op.get.key, op.shard, op.shard_version)
                self._read(op.id, "get", op.get, timeout, sink, group, op.causal_time)
            elif kind == "scan":
                group = route.for_range(op.scan.start, op.scan.end, op.shard, op.shard_version)
                self._read(op.id, "scan", op.scan, timeout, sink, group, op.causal_time)
            elif kind == "compact":
                self._compact(op, timeout, sink)
            elif kind is not None and kind.startswith("lease_"):
                self.leases.dispatch(op, kind, timeout, sink)
            else:
                raise InvalidOp("empty op: set one of put, get, delete, scan, cas", definite=True)
        except OpError as e:
            self._fail(op.id, kind or "none", e, sink)
        except Exception as e:  # a bug before the op reached the driver: still answer
            self._internal(op.id, kind or "none", e, sink, definite=True)

    def refuse(self, op: kv_pb2.Op, error: OpError, sink: Sink) -> None:
        """Answer ``op`` with ``error`` without starting it."""
        self._fail(op.id, op.WhichOneof("request") or "none", error, sink)

    def _count(self, op: str, code: int) -> None:
        child = self._counters.get((op, code))
        if child is None:
            child = self._counters[(op, code)] = self.metrics.client_ops.labels(op, str(code))
        child.inc()

    def _fail(self, op_id: int, kind: str, e: OpError, sink: Sink) -> None:
        self._count(kind, e.code)
        sink.emit(kv_pb2.OpResult(id=op_id, error=convert.error_pb(e)))

    def _internal(self, op_id: int, kind: str, e: Exception, sink: Sink, *, definite: bool) -> None:
        """Answer INTERNAL when building an answer failed (a damaged record, a bug): the
        caller must not wait for ever. Reads are definite; a write may have applied."""
        log.event("reply_failed", level=40, op=kind, error=repr(e))
        err = InternalOp(f"internal error answering {kind}: {e}", definite=definite)
        self._fail(op_id, kind, err, sink)

    def _answer(
        self, op_id: int, kind: str, build: Callable[[], kv_pb2.OpResult], sink: Sink
    ) -> None:
        """Emit what ``build`` returns, or the error it raises."""
        try:
            result = build()
        except OpError as e:
            self._fail(op_id, kind, e, sink)
            return
        except Exception as e:  # e.g. CorruptionError: a damaged record
            self._internal(op_id, kind, e, sink, definite=kind in ("get", "scan"))
            return
        self._count(kind, 0)
        sink.emit(result)

    def _write(
        self,
        op_id: int,
        kind: str,
        cmd: Command,
        want_prev: bool,
        timeout: float,
        sink: Sink,
        group: int,
    ) -> None:
        def build(res: ApplyResult) -> kv_pb2.OpResult:
            result = kv_pb2.OpResult(id=op_id)
            # The entry's time, or the group's when unknown (both at or above the write's).
            hdr = self._header(group, res.index, res.time or -1)
            convert.fill_write_result(result, cmd, res, hdr, want_prev)
            return result

        self.propose_op(op_id, kind, group, cmd, timeout, sink, build)

    def propose_op(
        self,
        op_id: int,
        kind: str,
        group: int,
        cmd: Command,
        timeout: float,
        sink: Sink,
        build: Callable[[ApplyResult], kv_pb2.OpResult],
    ) -> None:
        """Propose ``cmd`` to ``group``; answer with ``build(result)`` once it applied."""

        def done(res: ApplyResult | None, error: OpError | None) -> None:
            if error is not None or res is None:
                self._fail(op_id, kind, error or OpError("no result", definite=False), sink)
            elif sink.has_room():
                self._answer(op_id, kind, lambda: build(res), sink)
            else:
                sink.park(lambda: self._answer(op_id, kind, lambda: build(res), sink))

        cb: Callback[ApplyResult] = Callback(done)
        if self.router.sharded:
            frozen = self._frozen(group)
            if frozen is not None:
                self._fail(op_id, kind, frozen, sink)
                return
        try:
            self.driver.propose(group, cmd, timeout, cb)
        except Exception as e:  # one-shot: harmless if the driver already answered
            cb.set_exception(e)

    def read_op(
        self,
        op_id: int,
        kind: str,
        group: int,
        timeout: float,
        sink: Sink,
        build: Callable[[int], kv_pb2.OpResult],
    ) -> None:
        """Answer with ``build(applied index)`` after a strong read barrier (ReadIndex)."""

        def done(index: int | None, error: OpError | None) -> None:
            if error is not None or index is None:
                self._fail(op_id, kind, error or OpError("no index", definite=True), sink)
            else:
                self._answer(op_id, kind, lambda: build(index), sink)

        cb: Callback[int] = Callback(done)
        try:
            self.driver.read_barrier(group, "strong", 0, timeout, cb)
        except Exception as e:
            cb.set_exception(e)

    def _read(
        self,
        op_id: int,
        kind: str,
        req: Any,
        timeout: float,
        sink: Sink,
        group: int,
        causal_time: int = 0,
    ) -> None:
        mode = convert.read_mode(req.read_mode)

        def get() -> kv_pb2.OpResult:
            # The applied time from the same LMDB snapshot as the value: the token
            # handed back must cover what the client saw (monotonic reads).
            kv, applied, time = self.storage.kv(group).get_at(req.key)
            result = kv_pb2.OpResult(id=op_id)
            got = result.get
            got.header.CopyFrom(self._header(group, applied, time))
            if kv is not None:
                convert.set_kv(got.kv, kv)
            return result

        def start() -> None:
            try:
                serve()
            except Exception as e:  # when parked, no Callback would catch it and answer
                self._internal(op_id, kind, e, sink, definite=True)

        def serve() -> None:
            moved = self._still_owned(group, kind, req) if self.router.sharded else None
            if moved is None and self.router.sharded and mode not in ("eventual", "causal"):
                moved = self._frozen(group)
            if moved is not None:
                # A split applied while the read waited: serve only what the group owns.
                self._fail(op_id, kind, moved, sink)
            elif kind == "get" and req.revision:
                self._get_at_revision(op_id, group, req, sink)
            elif kind == "get":
                self._answer(op_id, kind, get, sink)
            else:
                self._scan(op_id, group, req, sink)

        def done(_: int | None, error: OpError | None) -> None:
            if error is not None:
                self._fail(op_id, kind, error, sink)
            elif sink.has_room():
                start()
            else:
                sink.park(start)

        cb: Callback[int] = Callback(done)
        try:
            self.driver.read_barrier(group, mode, req.causal_token, timeout, cb, causal_time)
        except Exception as e:
            cb.set_exception(e)

    def _get_at_revision(self, op_id: int, group: int, req: kv_pb2.GetRequest, sink: Sink) -> None:
        """On the scan threads: the read scans the history after the revision (up to the
        retention window), too long to stall the event loop for."""

        def read() -> tuple[Any, int, int]:
            try:
                return history.get_at_revision(self.storage, group, req.key, req.revision)
            except Moved as e:  # a split or merge applied after the route check
                shards = self.router.overlapping(req.key, req.key + b"\0")
                raise StaleRouteOp(f"stale route: {e}", shards) from None

        def build(f: asyncio.Future[tuple[Any, int, int]]) -> kv_pb2.OpResult:
            kv, applied, time = f.result()  # OutOfRangeOp: answered as the op's error
            result = kv_pb2.OpResult(id=op_id)
            result.get.header.CopyFrom(self._header(group, applied, time))
            if kv is not None:
                convert.set_kv(result.get.kv, kv)
            return result

        try:
            fut = asyncio.get_running_loop().run_in_executor(self._scans, read)
        except Exception as e:  # executor shut down: the node is stopping
            self._internal(op_id, "get", e, sink, definite=True)
            return
        fut.add_done_callback(lambda f: self._answer(op_id, "get", lambda: build(f), sink))

    def _compact(self, op: kv_pb2.Op, timeout: float, sink: Sink) -> None:
        group = history.shard_group(self.router, op)
        task = asyncio.ensure_future(
            history.compact(self.driver, group, op.compact.revision, timeout)
        )

        def done(f: asyncio.Future[kv_pb2.OpResult]) -> None:
            try:
                result = f.result()
            except OpError as e:
                self._fail(op.id, "compact", e, sink)
                return
            except TimeoutError:
                err = DeadlineOp("compact did not apply in time", definite=False)
                self._fail(op.id, "compact", err, sink)
                return
            except Exception as e:
                self._internal(op.id, "compact", e, sink, definite=False)
                return
            result.id = op.id
            result.compact.header.CopyFrom(self._header(group, 0))
            self._count("compact", 0)
            sink.emit(result)

        task.add_done_callback(done)

    def _frozen(self, group: int) -> OpError | None:
        """A merge source frozen by a PrepareMerge takes no write and serves no strong
        read (its range may already be the target's, TiKV #8034): a stale route, which
        the client retries until the map shows the merge (or its rollback)."""
        d = self.storage.group(group).view.shard
        if d is None or not d.merging_into:
            return None
        return StaleRouteOp(
            f"stale route: shard {group} is merging into shard {d.merging_into}",
            self.router.overlapping(d.start, d.end or d.start + b"\0"),
        )

    def _still_owned(self, group: int, kind: str, req: Any) -> OpError | None:
        d = self.storage.group(group).view.shard
        start, end = (req.key, req.key + b"\0") if kind == "get" else (req.start, req.end)
        if d is not None and d.covers(start, end):
            return None
        return StaleRouteOp(
            f"stale route: shard {group} changed while the read waited",
            self.router.overlapping(start, end or start + b"\0"),
        )

    def _scan(self, op_id: int, group: int, req: kv_pb2.ScanRequest, sink: Sink) -> None:
        """Read one page (at most scan_limit rows and about max_scan_bytes) in one LMDB
        snapshot; large ones on a scan thread, the header added back on the loop."""
        limit = self.limits.scan_limit(req.limit)
        reader = self.storage.kv(group)

        def rows() -> tuple[kv_pb2.OpResult, int, int]:
            kvs, more, applied, time = reader.scan_page_at(
                req.start, req.end, limit, self.limits.max_scan_bytes
            )
            result = kv_pb2.OpResult(id=op_id)
            page = result.scan
            page.kvs.extend(convert.kv_pb(kv) for kv in kvs)
            page.more = more
            return result, applied, time

        def with_header(built: tuple[kv_pb2.OpResult, int, int]) -> kv_pb2.OpResult:
            result, applied, time = built
            result.scan.header.CopyFrom(self._header(group, applied, time))
            return result

        if limit <= INLINE_SCAN_ROWS:
            self._answer(op_id, "scan", lambda: with_header(rows()), sink)
            return
        # Counted as built while it runs, so parked scans do not all start at once.
        held = self.limits.max_scan_bytes + self.limits.max_value_bytes
        sink.reserve(held)

        def finished(f: asyncio.Future[tuple[kv_pb2.OpResult, int, int]]) -> None:
            sink.reserve(-held)
            self._answer(op_id, "scan", lambda: with_header(f.result()), sink)

        try:
            fut = asyncio.get_running_loop().run_in_executor(self._scans, rows)
        except Exception as e:  # executor shut down: the node is stopping
            sink.reserve(-held)
            self._internal(op_id, "scan", e, sink, definite=True)
            return
        fut.add_done_callback(finished)

    # -- unary ----------------------------------------------------------------------
    async def _unary(
        self, op: kv_pb2.Op, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kv_pb2.OpResult:
        remaining = context.time_remaining()
        if remaining is not None:
            op.timeout_ms = max(1, int(remaining * 1000))
        size = op.ByteSize()
        try:
            self.budget.admit(1, size)
        except OpError as e:
            self._count(op.WhichOneof("request") or "none", e.code)
            await convert.abort(context, convert.error_pb(e))
        try:
            sink = _UnarySink(asyncio.get_running_loop().create_future())
            self.dispatch(op, sink)
            result = await sink.fut
        finally:
            self.budget.release(1, size)
        if result.HasField("error"):
            await convert.abort(context, result.error)
        return result

    async def Put(self, request: kv_pb2.PutRequest, context: Any) -> kv_pb2.PutResponse:
        return (await self._unary(kv_pb2.Op(put=request), context)).put

    async def Get(self, request: kv_pb2.GetRequest, context: Any) -> kv_pb2.GetResponse:
        return (await self._unary(kv_pb2.Op(get=request), context)).get

    async def Delete(self, request: kv_pb2.DeleteRequest, context: Any) -> kv_pb2.DeleteResponse:
        return (await self._unary(kv_pb2.Op(delete=request), context)).delete

    async def Scan(self, request: kv_pb2.ScanRequest, context: Any) -> kv_pb2.ScanResponse:
        return (await self._unary(kv_pb2.Op(scan=request), context)).scan

    async def CompareAndSwap(self, request: kv_pb2.CasRequest, context: Any) -> kv_pb2.CasResponse:
        return (await self._unary(kv_pb2.Op(cas=request), context)).cas

    async def LeaseGrant(
        self, request: kv_pb2.LeaseGrantRequest, context: Any
    ) -> kv_pb2.LeaseGrantResponse:
        return (await self._unary(kv_pb2.Op(lease_grant=request), context)).lease_grant

    async def LeaseKeepAlive(
        self, request: kv_pb2.LeaseKeepAliveRequest, context: Any
    ) -> kv_pb2.LeaseKeepAliveResponse:
        return (await self._unary(kv_pb2.Op(lease_keep_alive=request), context)).lease_keep_alive

    async def LeaseRevoke(
        self, request: kv_pb2.LeaseRevokeRequest, context: Any
    ) -> kv_pb2.LeaseRevokeResponse:
        return (await self._unary(kv_pb2.Op(lease_revoke=request), context)).lease_revoke

    async def LeaseTimeToLive(
        self, request: kv_pb2.LeaseTimeToLiveRequest, context: Any
    ) -> kv_pb2.LeaseTimeToLiveResponse:
        result = await self._unary(kv_pb2.Op(lease_time_to_live=request), context)
        return result.lease_time_to_live

    async def LeaseList(
        self, request: kv_pb2.LeaseListRequest, context: Any
    ) -> kv_pb2.LeaseListResponse:
        return (await self._unary(kv_pb2.Op(lease_list=request), context)).lease_list

    # -- the batch stream -----------------------------------------------------------
    async def Batch(
        self, request_iterator: AsyncIterator[kv_pb2.BatchRequest], context: Any
    ) -> AsyncIterator[kv_pb2.BatchResponse]:
        # aclosing: a cancelled call releases what the stream holds now, not at GC.
        call = BatchCall(self, self.limits, self.budget)
        async with contextlib.aclosing(call.run(request_iterator)) as responses:
            async for response in responses:
                yield response

    # -- history (watch.py) -----------------------------------------------------------
    async def Watch(
        self, request: kv_pb2.WatchRequest, context: Any
    ) -> AsyncIterator[kv_pb2.WatchResponse]:
        async with contextlib.aclosing(self.watches.serve(request, context)) as responses:
            async for response in responses:
                yield response

    async def Compact(self, request: kv_pb2.CompactRequest, context: Any) -> kv_pb2.CompactResponse:
        return (await self._unary(kv_pb2.Op(compact=request), context)).compact


class _UnarySink:
    """A unary call's one answer: no flow control beyond the node budget."""

    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[kv_pb2.OpResult]) -> None:
        self.fut = fut

    def emit(self, result: kv_pb2.OpResult, /) -> None:
        if not self.fut.done():
            self.fut.set_result(result)

    def has_room(self) -> bool:
        return True

    def park(self, build: Callable[[], None], /) -> None:
        build()

    def reserve(self, nbytes: int, /) -> None:
        pass
