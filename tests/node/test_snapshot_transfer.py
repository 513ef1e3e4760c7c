"""Snapshots travel by the SendSnapshot stream, in checksummed chunks, resumable; a
corrupt one is refused and counted and the node keeps serving (issue 11 points 3 and 6:
a corrupt snapshot used to fail inside the persist and end the process)."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import pytest

from kvstore._pb import peer_pb2, peer_pb2_grpc
from kvstore.consensus.types import (
    ConfState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from kvstore.node.wire import message_to_pb
from kvstore.server.process import Node, ServeOptions
from kvstore.statemachine.records import encode_kv
from kvstore.statemachine.types import KeyValue
from kvstore.storage.snapshot import write_image

from .inprocess import free_ports

pytestmark = pytest.mark.timeout(60)

INDEX = 100
META = SnapshotMetadata(index=INDEX, term=5, conf_state=ConfState(voters=frozenset({1, 2, 3})))
MSG = Message(
    type=MessageType.SNAPSHOT, group=1, from_=2, to=1, term=5, snapshot=Snapshot(metadata=META)
)


def _image(n: int = 300) -> bytes:
    kv = [
        (f"k{i:04}".encode(), encode_kv(KeyValue(f"k{i:04}".encode(), b"v" * 1000, 1, 7, 7)))
        for i in range(n)
    ]
    return write_image(INDEX, kv, [])


def _counter(node: Node, name: str, **labels: str) -> float:
    for metric in getattr(node.metrics, name).collect():
        for s in metric.samples:
            if s.name.endswith("_total") and s.labels == labels:
                return float(s.value)
    return 0.0


async def _transfer(
    endpoint: str, image: bytes, *, upto: int | None = None, chunk: int = 64 << 10, flip: int = -1
) -> list[peer_pb2.SnapshotAck]:
    """Send ``image`` (up to ``upto`` bytes) as node 2 would; returns the acks."""
    header = peer_pb2.SnapshotHeader(
        cluster_id="kvstore",
        to=1,
        message=message_to_pb(MSG),
        size=len(image),
        crc32=zlib.crc32(image),
        **{"from": 2},
    )
    acks: list[peer_pb2.SnapshotAck] = []
    start = asyncio.Event()

    async def chunks() -> AsyncIterator[peer_pb2.SnapshotChunk]:
        yield peer_pb2.SnapshotChunk(header=header)
        await start.wait()
        at = acks[0].offset
        end = len(image) if upto is None else upto
        while at < end:
            data = image[at : min(at + chunk, end)]
            crc = zlib.crc32(data) ^ (1 if flip == at else 0)
            yield peer_pb2.SnapshotChunk(offset=at, data=data, crc32=crc)
            at += len(data)

    async with grpc.aio.insecure_channel(endpoint) as ch:
        call = peer_pb2_grpc.PeerStub(ch).SendSnapshot(chunks())
        try:
            async for ack in call:
                acks.append(ack)
                start.set()
        except grpc.aio.AioRpcError:
            assert acks[-1].error, "only a refusal ends the stream early"
    return acks


async def _node(tmp_path: Path) -> tuple[Node, str]:
    ports = free_ports(3)
    peers = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(ports)}
    node = Node(ServeOptions(id=1, listen=peers[1], peers=peers, data_dir=str(tmp_path)))
    await node.start()
    return node, peers[1]


def test_resumed_transfer_installs_the_image(tmp_path: Path) -> None:
    async def main() -> None:
        node, ep = await _node(tmp_path)
        try:
            image = _image()
            acks = await _transfer(ep, image, upto=len(image) // 2)
            assert acks[0].offset == 0 and not any(a.done for a in acks)
            acks = await _transfer(ep, image)
            assert acks[0].offset == len(image) // 2 // (64 << 10) * (64 << 10) or (
                acks[0].offset == len(image) // 2
            ), "the second transfer resumes where the first stopped"
            assert acks[-1].done and not acks[-1].error
            for _ in range(100):
                if node.storage.kv(1).applied_index() == INDEX:
                    break
                await asyncio.sleep(0.05)
            assert node.storage.kv(1).applied_index() == INDEX
            got = node.storage.kv(1).get(b"k0299")
            assert got is not None and got.value == b"v" * 1000
            assert not node.failed.is_set()
            assert list((tmp_path / "snapshots").iterdir()) == [], "installed files are removed"
        finally:
            await node.stop()

    asyncio.run(main())


def test_corrupt_snapshot_from_a_peer_is_refused_and_counted(tmp_path: Path) -> None:
    async def main() -> None:
        node, ep = await _node(tmp_path)
        try:
            good = _image(20)
            # A whole-file checksum that matches what is sent, but not an image: the
            # sender itself was wrong (the image's own checksum catches it).
            bad = bytearray(good)
            bad[len(bad) // 2] ^= 0xFF
            acks = await _transfer(ep, bytes(bad))
            assert "rejected" in acks[-1].error
            assert _counter(node, "snapshots_rejected", group="1", reason="corrupt") == 1
            # A chunk whose bytes do not match its checksum.
            acks = await _transfer(ep, good, chunk=1024, flip=2048)
            assert "checksum" in acks[-1].error
            assert _counter(node, "snapshots_rejected", group="1", reason="chunk_checksum") == 1
            # An image inline in a consensus message never reaches the core.
            inline = Message(
                type=MessageType.SNAPSHOT,
                group=1,
                from_=2,
                to=1,
                term=5,
                snapshot=Snapshot(metadata=META, data=bytes(bad)),
            )
            batch = peer_pb2.PeerBatch(
                cluster_id="kvstore", to=1, messages=[message_to_pb(inline)], **{"from": 2}
            )
            async with grpc.aio.insecure_channel(ep) as ch:
                call = peer_pb2_grpc.PeerStub(ch).Stream()
                await call.write(batch)
                for _ in range(100):
                    if _counter(node, "dropped", group="1", reason="snapshot_inline"):
                        break
                    await asyncio.sleep(0.05)
                call.cancel()
            assert _counter(node, "dropped", group="1", reason="snapshot_inline") == 1
            await asyncio.sleep(0.3)
            assert not node.failed.is_set(), "a corrupt snapshot ended the node"
            assert node.storage.kv(1).applied_index() == 0
            assert node.driver.status(1).last_index < INDEX
        finally:
            await node.stop()

    asyncio.run(main())
