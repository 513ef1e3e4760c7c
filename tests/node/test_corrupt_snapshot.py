"""A corrupt snapshot from a peer is refused and counted; the node keeps serving
(issue 11 point 6: it used to reach the persist, raise there and end the process)."""

from __future__ import annotations

import asyncio
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
from kvstore.storage.snapshot import write_image

from .test_inprocess import _ports

pytestmark = pytest.mark.timeout(60)


def _rejected(node: Node) -> float:
    for metric in node.metrics.snapshots_rejected.collect():
        for s in metric.samples:
            if s.name.endswith("_total") and s.labels == {"group": "1", "reason": "corrupt"}:
                return s.value
    return 0.0


def test_corrupt_snapshot_from_a_peer_is_rejected_and_counted(tmp_path: Path) -> None:
    async def main() -> None:
        ports = _ports(3)
        peers = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(ports)}
        node = Node(ServeOptions(id=1, listen=peers[1], peers=peers, data_dir=str(tmp_path)))
        await node.start()
        try:
            good = write_image(100, [(b"k", b"not checked here")], [])
            bad = good[:-5] + bytes([good[-5] ^ 0xFF]) + good[-4:]  # one flipped bit
            snap = Snapshot(
                metadata=SnapshotMetadata(
                    index=100, term=5, conf_state=ConfState(voters=frozenset({1, 2, 3}))
                ),
                data=bad,
            )
            msg = Message(type=MessageType.SNAPSHOT, group=1, from_=2, to=1, term=5, snapshot=snap)
            batch = peer_pb2.PeerBatch(
                cluster_id="kvstore", to=1, messages=[message_to_pb(msg)], **{"from": 2}
            )
            async with grpc.aio.insecure_channel(peers[1]) as ch:
                call = peer_pb2_grpc.PeerStub(ch).Stream()
                await call.write(batch)
                for _ in range(100):
                    if _rejected(node) or node.failed.is_set():
                        break
                    await asyncio.sleep(0.05)
                call.cancel()
            await asyncio.sleep(0.3)  # a crash would follow the persist
            assert not node.failed.is_set(), "a corrupt snapshot ended the node"
            assert _rejected(node) == 1
            st = node.driver.status(1)
            assert st.applied == 0 and st.last_index < 100
            assert node.storage.kv(1).applied_index() == 0
        finally:
            await node.stop()

    asyncio.run(main())
