"""The Backup admin RPC: one group's state machine image at a linearizable point, in chunks.

Rule: the image is taken only after a ReadIndex read barrier has completed (the leader
confirmed its leadership with a heartbeat round and this node has applied at least that
index), from ONE LMDB read transaction at the applied index it sees, which is >= the
read index. So every write acknowledged before the call started is in the image, and
nothing in it was uncommitted. The image is the snapshot image of kvstore/storage/snapshot.py
(CRC32-checked), built in a worker thread and handed to the stream through a bounded
queue: never whole in memory, no message over CHUNK bytes, writes go on meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import zlib
from collections.abc import AsyncIterator
from typing import Any

from kvstore._pb import admin_pb2
from kvstore.node import log
from kvstore.node.driver import NodeDriver
from kvstore.node.errors import OpError, UnavailableOp
from kvstore.server import sharding
from kvstore.storage.snapshot import image_shard

CHUNK = 1 << 20
"""Bytes of image per message (the port's limit is 64 MiB)."""
QUEUE_CHUNKS = 8
"""Chunks built ahead of the stream: bounds the memory of a slow reader's backup."""
READ_TIMEOUT = 10.0


class _Cancelled(Exception):
    pass


class _ChunkSink:
    """Worker-thread side: cuts the image into chunks and queues them (blocking while
    the queue is full; raising once the stream has gone, which ends the read txn)."""

    def __init__(self, q: queue.Queue[bytes | None], gone: threading.Event) -> None:
        self._q = q
        self._gone = gone
        self._buf = bytearray()

    def write(self, b: bytes, /) -> int:
        self._buf += b
        while len(self._buf) >= CHUNK:
            self._push(bytes(self._buf[:CHUNK]))
            del self._buf[:CHUNK]
        return len(b)

    def flush(self) -> None:
        if self._buf:
            self._push(bytes(self._buf))
            self._buf.clear()

    def _push(self, data: bytes | None) -> None:
        while True:
            if self._gone.is_set():
                raise _Cancelled
            try:
                self._q.put(data, timeout=0.5)
                return
            except queue.Full:
                continue


class BackupAdmin:
    """Mixed into AdminService; needs driver, cluster_id, consensus."""

    driver: NodeDriver
    cluster_id: str
    consensus: str

    async def _abort(self, context: Any, e: OpError) -> None:
        raise NotImplementedError

    async def Backup(
        self, request: admin_pb2.BackupRequest, context: Any
    ) -> AsyncIterator[admin_pb2.BackupChunk]:
        group = request.group
        loop = asyncio.get_running_loop()
        try:
            if group not in self.driver.groups:
                raise UnavailableOp(f"group {group} is not hosted here", definite=True)
            fut: asyncio.Future[int] = loop.create_future()
            self.driver.read_barrier(group, "strong", 0, READ_TIMEOUT, fut)
            read_index = await fut
        except OpError as e:
            await self._abort(context, e)
            return
        storage = self.driver.storage
        shard_info = sharding.load(storage)
        yield admin_pb2.BackupChunk(
            start=admin_pb2.BackupStart(
                group=group,
                read_index=read_index,
                cluster_id=self.cluster_id,
                consensus=self.consensus,
                sharded=shard_info.sharded,
                meta_voters=list(shard_info.meta_voters),
            )
        )
        q: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_CHUNKS)
        gone = threading.Event()
        sink = _ChunkSink(q, gone)

        def build() -> Any:
            try:
                out = storage.group(group).write_image_to(sink)
                sink.flush()
                return out
            except _Cancelled:  # the caller went away: the read txn is closed, done
                log.event("backup_cancelled", group=group, read_index=read_index)
                return None
            finally:
                # The stream's end marker, also after a failure (the stream then fails).
                if not gone.is_set():
                    with contextlib.suppress(queue.Full):
                        q.put(None, timeout=5.0)

        worker = loop.run_in_executor(None, build)
        first = b""
        try:
            while True:
                data = await asyncio.to_thread(q.get)
                if data is None:
                    break
                first = first or data
                yield admin_pb2.BackupChunk(data=data, crc32=zlib.crc32(data))
            meta, size, crc = await worker
        finally:
            gone.set()
            with contextlib.suppress(queue.Full):
                q.put_nowait(None)  # wakes a q.get still waiting in its thread
        if meta.index < read_index:  # applied indexes never go back; a guard, not a path
            raise RuntimeError(f"image at {meta.index} below read index {read_index}")
        log.event(
            "backup_sent",
            group=group,
            index=meta.index,
            read_index=read_index,
            bytes=size,
        )
        yield admin_pb2.BackupChunk(
            done=admin_pb2.BackupDone(
                index=meta.index,
                term=meta.term,
                voters=sorted(meta.conf_state.voters),
                learners=sorted(meta.conf_state.learners),
                size=size,
                crc32=crc,
                shard=image_shard(group, meta.index, first),
            )
        )
