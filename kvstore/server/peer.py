"""The peer service (thin): hands every inbound batch to the transport's checks.

Rule: a rejected batch is answered with one PeerReply naming the reason and the
stream ends; a malformed stream only ends that stream, never the node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from kvstore._pb import peer_pb2, peer_pb2_grpc
from kvstore.node.snapshot_recv import SnapshotReceiver
from kvstore.node.transport import PeerTransport


class PeerService(peer_pb2_grpc.PeerServicer):
    def __init__(self, transport: PeerTransport, snapshots: SnapshotReceiver) -> None:
        self.transport = transport
        self.snapshots = snapshots

    async def Stream(
        self, request_iterator: AsyncIterator[peer_pb2.PeerBatch], context: Any
    ) -> AsyncIterator[peer_pb2.PeerReply]:
        async for batch in request_iterator:
            error = self.transport.receive(batch)
            if error is not None:
                yield peer_pb2.PeerReply(error=error)
                return

    async def SendSnapshot(
        self, request_iterator: AsyncIterator[peer_pb2.SnapshotChunk], context: Any
    ) -> AsyncIterator[peer_pb2.SnapshotAck]:
        async for ack in self.snapshots.serve(request_iterator):
            yield ack
