"""The client KV service (thin): checks input, hands commands to the driver, answers.

Rule: no consensus or storage logic here. Unary RPCs and the Batch stream share
one dispatch path; the stream answers ops in completion order, many per message,
and an op's error never ends the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from kvstore._pb import kv_pb2, kv_pb2_grpc
from kvstore.node import log
from kvstore.node.driver import NodeDriver
from kvstore.node.errors import InternalOp, InvalidOp, OpError
from kvstore.node.limits import Limits
from kvstore.node.metrics import NodeMetrics
from kvstore.node.pending import Callback
from kvstore.server import convert
from kvstore.statemachine import ApplyResult, Command
from kvstore.storage import NodeStorage

GROUP = 1
"""The one consensus group hosted for now; every path below still names its group."""

DEFAULT_TIMEOUT = 10.0

Emit = Callable[[kv_pb2.OpResult], None]


def group_of(key: bytes) -> int:
    """The shard map: one shard for now."""
    return GROUP


class KVService(kv_pb2_grpc.KVServicer):
    def __init__(
        self,
        *,
        driver: NodeDriver,
        storage: NodeStorage,
        limits: Limits,
        metrics: NodeMetrics,
        node_id: int,
    ) -> None:
        self.driver = driver
        self.storage = storage
        self.limits = limits
        self.metrics = metrics
        self.node_id = node_id
        self._counters: dict[tuple[str, int], Any] = {}
        self._last_header_key: tuple[int, int, int, int] | None = None
        self._last_header = kv_pb2.ResponseHeader()

    # -- dispatch -------------------------------------------------------------------
    def _header(self, group: int, index: int) -> kv_pb2.ResponseHeader:
        """The header for answers at ``index``; the ops of one entry share one."""
        g = self.driver.groups.get(group)
        term = g.term if g is not None else 0
        leader = g.leader if g is not None else 0
        key = (group, index, term, leader)
        if key != self._last_header_key:
            self._last_header = convert.header(group, self.node_id, term, index, leader)
            self._last_header_key = key
        return self._last_header

    def dispatch(self, op: kv_pb2.Op, emit: Emit) -> None:
        """Start one op; ``emit`` is called exactly once with its OpResult."""
        timeout = op.timeout_ms / 1000 if op.timeout_ms else DEFAULT_TIMEOUT
        kind = op.WhichOneof("request")
        try:
            if kind == "put":
                self._write(
                    op.id,
                    "put",
                    convert.put_command(op.put, self.limits),
                    op.put.prev_kv,
                    timeout,
                    emit,
                )
            elif kind == "delete":
                self._write(
                    op.id,
                    "delete",
                    convert.delete_command(op.delete, self.limits),
                    True,
                    timeout,
                    emit,
                )
            elif kind == "cas":
                self._write(
                    op.id, "cas", convert.cas_command(op.cas, self.limits), True, timeout, emit
                )
            elif kind == "get":
                self.limits.check_key(op.get.key)
                self._read(op.id, "get", op.get, timeout, emit)
            elif kind == "scan":
                self._read(op.id, "scan", op.scan, timeout, emit)
            else:
                raise InvalidOp("empty op: set one of put, get, delete, scan, cas", definite=True)
        except OpError as e:
            self._fail(op.id, kind or "none", e, emit)
        except Exception as e:  # a bug before the op reached the driver: still answer
            self._internal(op.id, kind or "none", e, emit, definite=True)

    def _count(self, op: str, code: int) -> None:
        child = self._counters.get((op, code))
        if child is None:
            child = self._counters[(op, code)] = self.metrics.client_ops.labels(op, str(code))
        child.inc()

    def _fail(self, op_id: int, kind: str, e: OpError, emit: Emit) -> None:
        self._count(kind, e.code)
        emit(kv_pb2.OpResult(id=op_id, error=convert.error_pb(e)))

    def _internal(self, op_id: int, kind: str, e: Exception, emit: Emit, *, definite: bool) -> None:
        """Answer INTERNAL when building an answer failed (a damaged record, a bug): the
        caller must not wait for ever. Reads are definite; a write may have applied."""
        log.event("reply_failed", level=40, op=kind, error=repr(e))
        err = InternalOp(f"internal error answering {kind}: {e}", definite=definite)
        self._fail(op_id, kind, err, emit)

    def _write(
        self, op_id: int, kind: str, cmd: Command, want_prev: bool, timeout: float, emit: Emit
    ) -> None:
        group = group_of(cmd.key)

        def done(res: ApplyResult | None, error: OpError | None) -> None:
            if error is not None or res is None:
                self._fail(op_id, kind, error or OpError("no result", definite=False), emit)
                return
            result = kv_pb2.OpResult(id=op_id)
            try:
                convert.fill_write_result(
                    result, cmd, res, self._header(group, res.index), want_prev
                )
            except OpError as e:
                self._fail(op_id, kind, e, emit)
                return
            except Exception as e:
                self._internal(op_id, kind, e, emit, definite=False)
                return
            self._count(kind, 0)
            emit(result)

        cb: Callback[ApplyResult] = Callback(done)
        try:
            self.driver.propose(group, cmd, timeout, cb)
        except Exception as e:  # one-shot: harmless if the driver already answered
            cb.set_exception(e)

    def _read(self, op_id: int, kind: str, req: Any, timeout: float, emit: Emit) -> None:
        mode = convert.read_mode(req.read_mode)
        group = group_of(req.key if kind == "get" else req.start)

        def done(_: int | None, error: OpError | None) -> None:
            if error is not None:
                self._fail(op_id, kind, error, emit)
                return
            try:
                result = build()
            except OpError as e:
                self._fail(op_id, kind, e, emit)
                return
            except Exception as e:  # e.g. CorruptionError: a damaged record
                self._internal(op_id, kind, e, emit, definite=True)
                return
            self._count(kind, 0)
            emit(result)

        def build() -> kv_pb2.OpResult:
            reader = self.storage.kv(group)
            if kind == "get":
                kv, applied = reader.get_with_applied(req.key)
                result = kv_pb2.OpResult(id=op_id)
                got = result.get
                got.header.CopyFrom(self._header(group, applied))
                if kv is not None:
                    convert.set_kv(got.kv, kv)
            else:
                limit = self.limits.scan_limit(req.limit)
                kvs, applied = reader.scan_with_applied(req.start, req.end, limit + 1)
                hdr = self._header(group, applied)
                result = kv_pb2.OpResult(
                    id=op_id,
                    scan=kv_pb2.ScanResponse(
                        header=hdr,
                        kvs=[convert.kv_pb(kv) for kv in kvs[:limit]],
                        more=len(kvs) > limit,
                    ),
                )
            return result

        cb: Callback[int] = Callback(done)
        try:
            self.driver.read_barrier(group, mode, req.causal_token, timeout, cb)
        except Exception as e:
            cb.set_exception(e)

    # -- unary ----------------------------------------------------------------------
    async def _unary(
        self, op: kv_pb2.Op, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kv_pb2.OpResult:
        remaining = context.time_remaining()
        if remaining is not None:
            op.timeout_ms = max(1, int(remaining * 1000))
        fut: asyncio.Future[kv_pb2.OpResult] = asyncio.get_running_loop().create_future()

        def emit(r: kv_pb2.OpResult) -> None:
            if not fut.done():
                fut.set_result(r)

        self.dispatch(op, emit)
        result = await fut
        if result.HasField("error"):
            e = result.error
            await context.abort(
                _STATUS.get(e.code, grpc.StatusCode.UNKNOWN),
                e.message,
                trailing_metadata=(
                    ("kvstore-leader-id", str(e.leader_id)),
                    ("kvstore-leader-endpoint", e.leader_endpoint),
                    ("kvstore-definite", "1" if e.definite else "0"),
                ),
            )
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

    # -- the batch stream -----------------------------------------------------------
    async def Batch(
        self, request_iterator: AsyncIterator[kv_pb2.BatchRequest], context: Any
    ) -> AsyncIterator[kv_pb2.BatchResponse]:
        outbox: list[kv_pb2.OpResult] = []
        wake = asyncio.Event()
        pending = 0

        def emit(r: kv_pb2.OpResult) -> None:
            nonlocal pending
            pending -= 1
            outbox.append(r)
            wake.set()

        async def reader() -> None:
            nonlocal pending
            try:
                async for req in request_iterator:
                    pending += len(req.ops)
                    try:
                        self.limits.check_batch(len(req.ops), req.ByteSize())
                    except OpError as e:
                        for op in req.ops:
                            emit(kv_pb2.OpResult(id=op.id, error=convert.error_pb(e)))
                        continue
                    for op in req.ops:
                        self.dispatch(op, emit)
            finally:
                wake.set()  # the stream's end (or the reader's failure) ends the loop

        task = asyncio.create_task(reader())
        try:
            while True:
                await wake.wait()
                wake.clear()
                if outbox:
                    results, outbox = outbox, []
                    yield kv_pb2.BatchResponse(results=results)
                if task.done() and pending <= 0 and not outbox:
                    task.result()
                    return
        finally:
            task.cancel()


_STATUS = {c.value[0]: c for c in grpc.StatusCode}
