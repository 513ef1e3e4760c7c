"""The peer service (thin): hands every inbound batch to the transport's checks.

Rule: a rejected batch is answered with one PeerReply naming the reason and the
stream ends; a malformed stream only ends that stream, never the node.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from kvstore._pb import peer_pb2, peer_pb2_grpc
from kvstore.node.transport import PeerTransport


class PeerService(peer_pb2_grpc.PeerServicer):
    def __init__(self, transport: PeerTransport) -> None:
        self.transport = transport

    async def Stream(
        self, request_iterator: AsyncIterator[peer_pb2.PeerBatch], context: Any
    ) -> AsyncIterator[peer_pb2.PeerReply]:
        async for batch in request_iterator:
            if any(pb.HasField("snapshot") for pb in batch.messages):
                await asyncio.to_thread(self.transport.screen_snapshots, batch)
            error = self.transport.receive(batch)
            if error is not None:
                yield peer_pb2.PeerReply(error=error)
                return
