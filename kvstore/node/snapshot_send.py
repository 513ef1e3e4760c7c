"""Sending snapshots: the image is built off the event loop and streamed in chunks.

Rules this module keeps:
- The cores' SNAPSHOT messages carry metadata only (``NodeStorage.stream_snapshots``);
  ``route`` takes them out of the outgoing messages and starts a transfer per (group,
  peer). At most one transfer per (group, peer) runs; a request while one runs is
  dropped (counted): the running one answers it.
- The image is written to a file from ONE LMDB read transaction in a worker thread
  (``GroupLog.write_image_to``), never on the event loop, and reused for every
  follower while it is as new as what the core asked for.
- The message a follower gets names the image's own metadata (index, term, membership
  as of the image), which may be newer than what the core asked for: any committed
  prefix is a valid snapshot, and the follower's answer tells the leader where it is.
- The image goes in chunks of CHUNK bytes, each with its CRC32, over the peer service's
  SendSnapshot stream; at most WINDOW bytes run ahead of the receiver's acks (flow
  control: a slow disk slows the sender, not the memory). The receiver says where to
  resume, so a broken transfer continues where it stopped when the core asks again.
- Every transfer ends in ``report(group, peer, ok)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import grpc
import grpc.aio

from kvstore._pb import peer_pb2, peer_pb2_grpc
from kvstore.consensus.types import Message, MessageType, Snapshot, SnapshotMetadata
from kvstore.node import log
from kvstore.node.metrics import NodeMetrics
from kvstore.node.transport import CHANNEL_OPTIONS
from kvstore.node.wire import message_to_pb
from kvstore.security.tls import ChannelTLS, node_name, open_channel
from kvstore.storage import NodeStorage

SNAPSHOT_TYPES = frozenset({MessageType.SNAPSHOT, MessageType.PAXOS_SNAPSHOT})
CHUNK = 1 << 20
WINDOW = 8 << 20
"""Bytes sent and not yet acknowledged by the receiver, at most."""
SYNC_EVERY = 8 << 20
STALL_S = 30.0
"""A transfer whose receiver acknowledges nothing for this long has failed."""
VERIFY_BYTES_PER_S = 20e6
"""A slow disk's pace for the receiver's final pass over the image."""


@dataclass(frozen=True, slots=True)
class BuiltImage:
    group: int
    meta: SnapshotMetadata
    path: str
    size: int
    crc: int


class SnapshotSender:
    def __init__(
        self,
        *,
        node_id: int,
        cluster_id: str,
        storage: NodeStorage,
        metrics: NodeMetrics,
        endpoints: dict[int, str],
        send: Callable[[list[Message]], None],
        directory: str,
        report: Callable[[int, int, bool], None] = lambda group, to, ok: None,
        tls: ChannelTLS | None = None,
    ) -> None:
        self.node_id = node_id
        self.tls = tls
        self.cluster_id = cluster_id
        self.storage = storage
        self.metrics = metrics
        self.endpoints = endpoints
        """Shared with the driver: member addresses learnt at run time appear here."""
        self._send = send
        self.report = report
        self.dir = directory
        self._active: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._images: dict[int, BuiltImage] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.startswith("out-"):  # images built by an earlier run
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))

    # -- the driver's send -------------------------------------------------------
    def route(self, msgs: list[Message]) -> None:
        """Drop-in for ``PeerTransport.send``: snapshots go by transfer, the rest on."""
        rest: list[Message] = []
        for m in msgs:
            if m.type in SNAPSHOT_TYPES and m.snapshot is not None:
                self._start(m)
            else:
                rest.append(m)
        if rest:
            self._send(rest)

    def _start(self, m: Message) -> None:
        key = (m.group, m.to)
        running = self._active.get(key)
        if running is not None and not running.done():
            self.metrics.dropped.labels(self.metrics.shard(m.group), "snapshot_in_flight").inc()
            return
        self._active[key] = asyncio.create_task(
            self._transfer(m), name=f"snapshot-{m.group}-{m.to}"
        )

    async def stop(self) -> None:
        tasks = list(self._active.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # -- one transfer --------------------------------------------------------------
    async def _transfer(self, m: Message) -> None:
        ok = False
        t0 = time.monotonic()
        assert m.snapshot is not None
        try:
            img, f = await self._image(m.group, m.snapshot.metadata)
            with f:
                sent = await self._stream(m, img, f)
            ok = True
            log.event(
                "snapshot_sent",
                group=m.group,
                to=m.to,
                index=img.meta.index,
                bytes=img.size,
                streamed=sent,
                seconds=round(time.monotonic() - t0, 3),
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:  # peer down, refused, stalled: the core asks again
            log.event("snapshot_send_failed", level=30, group=m.group, to=m.to, error=repr(e)[:300])
        finally:
            self.metrics.snapshots_sent.labels(
                self.metrics.shard(m.group), "ok" if ok else "failed"
            ).inc()
            self.report(m.group, m.to, ok)

    async def _image(self, group: int, want: SnapshotMetadata) -> tuple[BuiltImage, BinaryIO]:
        """A built image of ``group`` at least as new as ``want`` (what the core asked
        for), opened (so a newer build may replace the file meanwhile). The storage then
        names the built image in the cores' next snapshot requests while the log still
        continues from it (GroupLog.streamed), so it is reused, not rebuilt."""
        lock = self._locks.setdefault(group, asyncio.Lock())
        async with lock:
            img = self._images.get(group)
            if img is None or img.meta.index < want.index or not os.path.exists(img.path):
                t0 = time.monotonic()
                img = await asyncio.to_thread(self._build, group)
                log.event(
                    "snapshot_built",
                    group=group,
                    index=img.meta.index,
                    bytes=img.size,
                    seconds=round(time.monotonic() - t0, 3),
                )
                old = self._images.get(group)
                self._images[group] = img
                self.storage.group(group).streamed = img.meta
                if old is not None and old.path != img.path:
                    with contextlib.suppress(OSError):
                        os.unlink(old.path)  # open readers keep their copy (POSIX)
            return img, open(img.path, "rb")

    def _build(self, group: int) -> BuiltImage:
        """Worker thread: write the image from one read transaction to a file."""
        tmp = os.path.join(self.dir, f"out-{group}.tmp")
        with open(tmp, "wb") as raw:
            meta, size, crc = self.storage.group(group).write_image_to(_Trickle(raw))
        path = os.path.join(self.dir, f"out-{group}-{meta.index}-{meta.term}.img")
        os.replace(tmp, path)
        return BuiltImage(group=group, meta=meta, path=path, size=size, crc=crc)

    async def _stream(self, m: Message, img: BuiltImage, f: BinaryIO) -> int:
        """Send the image from where the receiver stands; returns the bytes sent."""
        endpoint = self.endpoints.get(m.to)
        if not endpoint:
            raise ConnectionError(f"no address for node {m.to}")
        msg = dataclasses.replace(m, snapshot=Snapshot(metadata=img.meta))
        header = peer_pb2.SnapshotHeader(
            cluster_id=self.cluster_id,
            to=m.to,
            message=message_to_pb(msg),
            size=img.size,
            crc32=img.crc,
            **{"from": self.node_id},
        )
        name = node_name(m.to) if self.tls is not None else None
        async with open_channel(endpoint, CHANNEL_OPTIONS, self.tls, name) as channel:
            call = peer_pb2_grpc.PeerStub(channel).SendSnapshot()
            await call.write(peer_pb2.SnapshotChunk(header=header))
            acks = _Acks(call)
            try:
                start = await acks.first()
                if start > img.size:
                    raise ConnectionError(f"receiver is at {start} of {img.size} bytes")
                f.seek(start)
                sent = start
                while sent < img.size:
                    await acks.wait_until(sent - WINDOW)
                    data = f.read(CHUNK)
                    if not data:
                        raise OSError(f"image file {img.path} ends at {sent}")
                    await call.write(
                        peer_pb2.SnapshotChunk(offset=sent, data=data, crc32=zlib.crc32(data))
                    )
                    sent += len(data)
                await call.done_writing()
                # The receiver now verifies the whole image before it answers: allow for
                # reading it at VERIFY_BYTES_PER_S on top of the usual silence.
                await acks.wait_done(STALL_S + img.size / VERIFY_BYTES_PER_S)
                return sent - start
            finally:
                acks.close()
                call.cancel()


class _Trickle:
    """A file written with a data sync every SYNC_EVERY bytes: the page cache never holds
    a whole image of dirty pages, whose writeback would stall the node's own fsyncs (the
    persist of every Ready) for as long as it takes to flush them."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._pending = 0

    def write(self, b: bytes) -> int:
        n = self._f.write(b)
        self._pending += n
        if self._pending >= SYNC_EVERY:
            self._f.flush()
            os.fdatasync(self._f.fileno())
            self._pending = 0
        return n


class _Acks:
    """Reads the receiver's acks of one transfer."""

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self.offset = -1
        self.done = False
        self.error = ""
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read(call))

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            async for ack in call:
                if ack.error:
                    self.error = ack.error
                    return
                self.offset = max(self.offset, ack.offset)
                self.done = ack.done
                self._changed.set()
            if not self.done:
                self.error = "the receiver ended the transfer"
        except grpc.aio.AioRpcError as e:
            self.error = f"{e.code().name}: {e.details()}"
        finally:
            self._changed.set()

    async def _next(self, timeout: float = STALL_S) -> None:
        if self.error:
            raise ConnectionError(f"snapshot refused: {self.error}")
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            raise ConnectionError(f"no ack from the receiver for {timeout:.0f} s") from None
        if self.error:
            raise ConnectionError(f"snapshot refused: {self.error}")

    async def first(self) -> int:
        while self.offset < 0:
            await self._next()
        return self.offset

    async def wait_until(self, offset: int) -> None:
        while self.offset < offset:
            await self._next()

    async def wait_done(self, timeout: float) -> None:
        while not self.done:
            await self._next(timeout)

    def close(self) -> None:
        self._task.cancel()
