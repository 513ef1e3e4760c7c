"""One multiplexed Batch stream to one endpoint.

Rule: many concurrent calls share one stream; whatever is queued while a write is
in flight goes out as the next BatchRequest (so load builds batches by itself).
When the stream breaks, every op still waiting fails with StreamBroken, which says
whether the op had been sent (its outcome is then unknown). ``heard_at`` is when the
stream last received anything, so a caller whose op got no answer can tell a slow node
(it answered others meanwhile) from one that answers nothing (paused or cut off).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import grpc
import grpc.aio

from kvstore._pb import kv_pb2, kv_pb2_grpc
from kvstore.security.tls import ChannelTLS, open_channel

MAX_OPS_PER_MESSAGE = 256
MAX_BYTES_PER_MESSAGE = 2 << 20
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 8 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
    # Notice a dead or paused server on an idle-looking connection.
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 3000),
]


class StreamBroken(Exception):
    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class BatchStream:
    def __init__(self, endpoint: str, tls: ChannelTLS | None = None) -> None:
        self.endpoint = endpoint
        self.channel = open_channel(endpoint, CHANNEL_OPTIONS, tls)
        self._call: grpc.aio.StreamStreamCall | None = None
        self._ids = itertools.count(1)
        self._queue: list[tuple[kv_pb2.Op, asyncio.Future[kv_pb2.OpResult]]] = []
        self._pending: dict[int, asyncio.Future[kv_pb2.OpResult]] = {}
        self._answered_late: set[int] = set()
        """Ops handed to the stream that the stream settled (answer or break) after their
        caller stopped waiting and before it called ``forget``: they left this client
        (see ``forget``)."""
        self._wake = asyncio.Event()
        self.broken: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.heard_at = -1.0
        """Loop time of the last response received (-1: none yet)."""

    def _ensure_started(self) -> None:
        if self._call is None:
            self._call = kv_pb2_grpc.KVStub(self.channel).Batch()
            self._tasks = [
                asyncio.create_task(self._sender()),
                asyncio.create_task(self._receiver()),
            ]

    def submit(self, op: kv_pb2.Op) -> asyncio.Future[kv_pb2.OpResult]:
        fut: asyncio.Future[kv_pb2.OpResult] = asyncio.get_running_loop().create_future()
        if self.broken is not None:
            fut.set_exception(StreamBroken(self.broken, sent=False))
            return fut
        self._ensure_started()
        op.id = next(self._ids)
        self._queue.append((op, fut))
        self._wake.set()
        return fut

    def forget(self, op_id: int) -> bool:
        """Stop waiting for op ``op_id``; True if it had been handed to the stream (its
        outcome is unknown), False if it never left this client.

        An answer, or the stream breaking, after the caller's timer failed the op but
        before the caller gets here has already taken the op out of ``_pending``: that op
        was sent (and may have applied), so it must not read as never sent, or the caller
        would retry the write under a fresh seq and apply it twice, or report it as
        certainly failed (seen in Jepsen kill and pause runs under load: a cas answered
        false although it had applied, a write reported failed whose value was read)."""
        if self._pending.pop(op_id, None) is not None:
            return True
        if op_id in self._answered_late:
            self._answered_late.discard(op_id)
            return True
        return False

    def _deliver(self, r: kv_pb2.OpResult) -> None:
        fut = self._pending.pop(r.id, None)
        if fut is None:
            return
        if fut.done():
            if not fut.cancelled():  # a cancelled caller never asks
                self._answered_late.add(r.id)
        else:
            fut.set_result(r)

    async def _sender(self) -> None:
        assert self._call is not None
        try:
            # Until the stream is up nothing has been sent: a refused connection fails the
            # queued ops as certainly not applied (definite), not as unknown.
            await self._call.wait_for_connection()
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    n, size = 0, 0
                    while n < len(self._queue) and n < MAX_OPS_PER_MESSAGE:
                        s = self._queue[n][0].ByteSize()
                        if n and size + s > MAX_BYTES_PER_MESSAGE:
                            break
                        size += s
                        n += 1
                    chunk, self._queue = self._queue[:n], self._queue[n:]
                    ops = []
                    for op, fut in chunk:
                        if not fut.done():
                            self._pending[op.id] = fut
                            ops.append(op)
                    if ops:
                        await self._call.write(kv_pb2.BatchRequest(ops=ops))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._break(f"stream to {self.endpoint} failed: {_describe(e)}")

    async def _receiver(self) -> None:
        assert self._call is not None
        try:
            loop = asyncio.get_running_loop()
            async for resp in self._call:
                self.heard_at = loop.time()
                for r in resp.results:
                    self._deliver(r)
            self._break(f"stream to {self.endpoint} ended")
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._break(f"stream to {self.endpoint} failed: {_describe(e)}")

    def _break(self, why: str) -> None:
        if self.broken is not None:
            return
        self.broken = why
        for op_id, fut in self._pending.items():
            if not fut.done():
                fut.set_exception(StreamBroken(why, sent=True))
            elif not fut.cancelled():
                # Its caller's timer fired and the caller has not asked yet: still sent.
                self._answered_late.add(op_id)
        self._pending.clear()
        for _, fut in self._queue:
            if not fut.done():
                fut.set_exception(StreamBroken(why, sent=False))
        self._queue.clear()
        for t in self._tasks:
            if t is not asyncio.current_task():
                t.cancel()
        if self._call is not None:
            self._call.cancel()

    async def close(self) -> None:
        self._break("client closed")
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.channel.close()


def _describe(e: Exception) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return repr(e)
