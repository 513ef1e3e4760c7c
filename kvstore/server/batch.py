"""One Batch stream: flow control between a client's requests, the node and its answers.

Rules this module keeps:
- Every op read from the stream is answered exactly once on it while the stream lives.
- A stream holds at most ``max_stream_inflight_ops`` ops and about
  ``max_stream_inflight_bytes`` (the request share of running ops plus answers built and
  not yet sent). Past either it stops reading the client's messages, so gRPC's flow
  control pushes back on a client that sends faster than it reads.
- Answers that complete while the built-but-unsent ones already fill the byte bound
  are parked unbuilt (a closure, not a copy of the value) until the client takes some:
  gRPC stops our sends when the client does not read, so nothing else would bound them.
- Answers go out in messages of at most ``max_response_bytes`` (one bigger answer alone).
- Whatever a stream holds is charged to the node's budget, and released when the
  stream ends, however it ends.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Protocol

from kvstore._pb import kv_pb2
from kvstore.node.errors import OpError
from kvstore.node.limits import Limits, NodeBudget

FIELD_OVERHEAD = 6
"""Tag and length prefix of one OpResult inside a BatchResponse (lengths < 2**28)."""


class Sink(Protocol):
    """Where the answers of one request go."""

    def emit(self, result: kv_pb2.OpResult, /) -> None:
        """Deliver the answer (called exactly once per op)."""

    def has_room(self) -> bool:
        """False when answers should not be built now; ``park`` the building instead."""

    def park(self, build: Callable[[], None], /) -> None:
        """Run ``build`` (which ends in ``emit``) once there is room."""

    def reserve(self, nbytes: int, /) -> None:
        """Count ``nbytes`` as built answers (an answer being built off the event loop);
        the builder gives them back with ``reserve(-nbytes)`` before it emits."""


class Dispatcher(Protocol):
    def dispatch(self, op: kv_pb2.Op, sink: Sink) -> None: ...

    def refuse(self, op: kv_pb2.Op, error: OpError, sink: Sink) -> None: ...


class BatchCall:
    def __init__(self, dispatcher: Dispatcher, limits: Limits, budget: NodeBudget) -> None:
        self._svc = dispatcher
        self._limits = limits
        self._budget = budget
        self._outbox: deque[tuple[kv_pb2.OpResult, int]] = deque()
        self._parked: deque[Callable[[], None]] = deque()
        self._ops = 0
        """Ops read and not yet sent back (running, parked or waiting in the outbox)."""
        self._pending_bytes = 0
        """The request share of the ops not yet answered."""
        self._out_bytes = 0
        """Answers built and not yet handed to gRPC (or being sent)."""
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._reading = True
        self._closed = False

    # -- the stream ----------------------------------------------------------------
    async def run(
        self, requests: AsyncIterator[kv_pb2.BatchRequest]
    ) -> AsyncGenerator[kv_pb2.BatchResponse, None]:
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox:
                    msg, n, size = self._pack()
                    yield msg
                    self._sent(n, size)
                if not self._reading and self._ops <= 0 and not self._outbox:
                    reader.result()
                    return
        finally:
            reader.cancel()
            self._close()

    async def _read(self, requests: AsyncIterator[kv_pb2.BatchRequest]) -> None:
        lim = self._limits
        try:
            async for req in requests:
                n = len(req.ops)
                if n == 0:
                    continue
                size = req.ByteSize()
                share = size // n
                self._ops += n
                try:
                    lim.check_batch(n, size)
                    self._budget.admit(n, share * n)
                except OpError as e:
                    self._budget.charge(n, 0)
                    sink = _MessageSink(self, 0)
                    for op in req.ops:
                        self._svc.refuse(op, e, sink)
                    continue
                self._pending_bytes += share * n
                sink = _MessageSink(self, share)
                for op in req.ops:
                    self._svc.dispatch(op, sink)
                while not self._closed and self._full():
                    self._room.clear()
                    await self._room.wait()
        finally:
            self._reading = False
            self._wake.set()  # the client's end (or a failure) may end the stream

    def _full(self) -> bool:
        lim = self._limits
        return (
            self._ops >= lim.max_stream_inflight_ops
            or self._pending_bytes + self._out_bytes >= lim.max_stream_inflight_bytes
        )

    # -- answers -------------------------------------------------------------------
    def _emit(self, result: kv_pb2.OpResult, share: int) -> None:
        if self._closed:
            return
        size = result.ByteSize() + FIELD_OVERHEAD
        self._pending_bytes -= share
        self._out_bytes += size
        self._budget.charge(0, size - share)
        self._outbox.append((result, size))
        self._wake.set()

    def _pack(self) -> tuple[kv_pb2.BatchResponse, int, int]:
        """The next message: answers in order up to max_response_bytes."""
        cap = self._limits.max_response_bytes
        batch: list[kv_pb2.OpResult] = []
        size = 0
        out = self._outbox
        while out and (not batch or size + out[0][1] <= cap):
            r, s = out.popleft()
            batch.append(r)
            size += s
        return kv_pb2.BatchResponse(results=batch), len(batch), size

    def _sent(self, n: int, size: int) -> None:
        self._ops -= n
        self._out_bytes -= size
        self._budget.release(n, size)
        while self._parked and self._has_room():
            self._parked.popleft()()
        if not self._full():
            self._room.set()

    def _reserve(self, nbytes: int) -> None:
        if self._closed:
            return
        self._out_bytes += nbytes
        self._budget.charge(0, nbytes)

    def _has_room(self) -> bool:
        return self._out_bytes < self._limits.max_stream_inflight_bytes

    def _close(self) -> None:
        """The stream ended: give back what it still holds; late answers are dropped."""
        if self._closed:
            return
        self._closed = True
        self._budget.release(self._ops, self._pending_bytes + self._out_bytes)
        self._ops = self._pending_bytes = self._out_bytes = 0
        self._outbox.clear()
        self._parked.clear()
        self._room.set()


class _MessageSink:
    """The sink of the ops of one request message (they share its byte share)."""

    __slots__ = ("_call", "_share")

    def __init__(self, call: BatchCall, share: int) -> None:
        self._call = call
        self._share = share

    def emit(self, result: kv_pb2.OpResult, /) -> None:
        self._call._emit(result, self._share)

    def has_room(self) -> bool:
        return self._call._has_room()

    def park(self, build: Callable[[], None], /) -> None:
        if self._call._closed:
            return
        self._call._parked.append(build)

    def reserve(self, nbytes: int, /) -> None:
        self._call._reserve(nbytes)
