"""Receiving snapshots: chunks go to a file; only a whole, verified image reaches a core.

Rules this module keeps:
- A transfer is checked like a peer batch (cluster id, a known sender, addressed to us,
  a snapshot message from that sender) before any byte is stored.
- Each chunk must come in order and match its CRC32, else the transfer is refused. The
  file is named after the image (group, sender, index, term, size, CRC), so a transfer
  of the same image resumes where the last one stopped; other files of the group go.
- Only after the last chunk: the whole file's CRC32 and the image's own structure and
  checksum are verified (in a worker thread). A file that fails is deleted and counted
  (``kvstore_snapshots_rejected_total``) and the transfer is refused; the node keeps
  serving. One that passes is handed to the driver as the SNAPSHOT message, its data a
  reference to the file (``storage.snapshot.staged_ref``), which the storage installs
  record by record in the persist transaction and then deletes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from kvstore._pb import peer_pb2
from kvstore.consensus.types import Message, Snapshot
from kvstore.node import log
from kvstore.node.metrics import NodeMetrics
from kvstore.node.snapshot_send import SNAPSHOT_TYPES, SYNC_EVERY
from kvstore.node.wire import WireError, message_from_pb
from kvstore.storage import CorruptionError
from kvstore.storage.snapshot import staged_path, staged_ref, verify_image

MAX_IMAGE = 1 << 40


class Refused(Exception):
    """The transfer is refused; the message says why (sent back to the sender)."""


class SnapshotReceiver:
    def __init__(
        self,
        *,
        node_id: int,
        cluster_id: str,
        known: Callable[[int], bool],
        deliver: Callable[[list[Message]], None],
        metrics: NodeMetrics,
        directory: str,
    ) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.known = known
        self.deliver = deliver
        self.metrics = metrics
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.startswith("in-") and name.endswith(".img"):  # verified, never installed
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))

    async def serve(
        self, chunks: AsyncIterator[peer_pb2.SnapshotChunk]
    ) -> AsyncIterator[peer_pb2.SnapshotAck]:
        """The SendSnapshot stream of one transfer: acks out, chunks in."""
        group = 0
        try:
            first = await anext(chunks)
            m, size, crc = self._check(first.header)
            group = m.group
            assert m.snapshot is not None
            meta = m.snapshot.metadata
            name = f"in-{m.group}-{m.from_}-{meta.index}-{meta.term}-{size}-{crc:08x}"
            part = os.path.join(self.dir, name + ".part")
            self._forget_others(m.group, name)
            offset = os.path.getsize(part) if os.path.exists(part) else 0
            if offset > size:
                os.unlink(part)
                offset = 0
            yield peer_pb2.SnapshotAck(offset=offset)
            unsynced = 0
            with open(part, "ab") as f:
                while offset < size:
                    try:
                        c = await anext(chunks)
                    except StopAsyncIteration:
                        return  # the sender stopped; keep what came for a resume
                    if c.offset != offset or offset + len(c.data) > size:
                        raise Refused(f"chunk at {c.offset} (+{len(c.data)}), expected {offset}")
                    if zlib.crc32(c.data) != c.crc32:
                        f.flush()
                        self._reject(m.group, "chunk_checksum", f"chunk at {offset}")
                        raise Refused(f"chunk at {offset} fails its checksum")
                    f.write(c.data)
                    offset += len(c.data)
                    unsynced += len(c.data)
                    if unsynced >= SYNC_EVERY:  # see snapshot_send._Trickle
                        f.flush()
                        await asyncio.to_thread(os.fdatasync, f.fileno())
                        unsynced = 0
                    yield peer_pb2.SnapshotAck(offset=offset)
            image = os.path.join(self.dir, name + ".img")
            try:
                await asyncio.to_thread(_verify, part, m.group, meta.index, size, crc)
            except CorruptionError as e:
                with contextlib.suppress(OSError):
                    os.unlink(part)
                self._reject(m.group, "corrupt", str(e))
                raise Refused(f"snapshot image rejected: {e}") from e
            os.replace(part, image)
            snap = Snapshot(metadata=meta, data=staged_ref(image))
            self.deliver([replace(m, snapshot=snap)])
            log.event("snapshot_received", group=m.group, sender=m.from_, index=meta.index)
            yield peer_pb2.SnapshotAck(offset=offset, done=True)
        except Refused as e:
            log.event("snapshot_transfer_refused", level=30, group=group, error=str(e)[:300])
            yield peer_pb2.SnapshotAck(error=str(e))
        except StopAsyncIteration:
            return

    def _check(self, h: peer_pb2.SnapshotHeader) -> tuple[Message, int, int]:
        sender = getattr(h, "from")
        if h.cluster_id != self.cluster_id:
            self.metrics.rejected_batches.labels("cluster_id").inc()
            raise Refused(f"cluster id mismatch: this is {self.cluster_id!r}")
        if not self.known(sender) or h.to != self.node_id:
            self.metrics.rejected_batches.labels("unknown_node").inc()
            raise Refused(f"unknown sender {sender} or wrong addressee {h.to}")
        try:
            m = message_from_pb(h.message)
        except WireError as e:
            raise Refused(f"bad snapshot message: {e}") from e
        if m.type not in SNAPSHOT_TYPES or m.snapshot is None or m.snapshot.data:
            raise Refused("the header must carry a snapshot message without data")
        if m.from_ != sender or m.to != self.node_id:
            raise Refused("the snapshot message is not from the sender to us")
        if not 0 < h.size <= MAX_IMAGE:
            raise Refused(f"image size {h.size} out of range")
        return m, h.size, h.crc32

    def _forget_others(self, group: int, keep: str) -> None:
        """Drop the group's other partial transfers (verified images stay until one is
        installed: the core may hold a reference to them, see ``discard_installed``)."""
        prefix = f"in-{group}-"
        for name in os.listdir(self.dir):
            if name.startswith(prefix) and name.endswith(".part") and name != keep + ".part":
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.dir, name))

    def _reject(self, group: int, reason: str, error: str) -> None:
        self.metrics.snapshots_rejected.labels(self.metrics.shard(group), reason).inc()
        log.event("snapshot_rejected", level=40, group=group, reason=reason, error=error[:300])


def _verify(path: str, group: int, index: int, size: int, crc: int) -> None:
    """Worker thread: the file is the image the header named, and a valid image."""
    got = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            got = zlib.crc32(block, got)
        if f.tell() != size or got != crc:
            raise CorruptionError("received image differs from the one sent", group=group)
        os.fsync(f.fileno())
        f.seek(0)
        verify_image(group, index, f)


def discard_installed(group: int, data: bytes) -> None:
    """After the persist that installed the snapshot ``data`` refers to: delete its file
    and the group's older received images (no core installs those any more)."""
    path = staged_path(data)
    if path is None:
        return
    directory, name = os.path.split(path)
    index = _index_of(name)
    with contextlib.suppress(OSError):
        for other in os.listdir(directory):
            mine = other.startswith(f"in-{group}-") and other.endswith(".img")
            if mine and (other == name or _index_of(other) <= index):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, other))


def _index_of(name: str) -> int:
    """in-GROUP-FROM-INDEX-TERM-SIZE-CRC.img -> INDEX (-1 if not such a name)."""
    parts = name.split("-")
    return int(parts[3]) if len(parts) == 7 and parts[3].isdigit() else -1
