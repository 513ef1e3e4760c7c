"""The peer service (thin): hands every inbound batch to the transport's checks.

Rules: a rejected batch is answered with one PeerReply naming the reason and the
stream ends; a malformed stream only ends that stream, never the node. With TLS every
batch and snapshot must come from the node the caller's certificate names (``node_of``;
security/auth.py lets only node certificates in at all).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from kvstore._pb import peer_pb2, peer_pb2_grpc
from kvstore.node import log
from kvstore.node.snapshot_recv import Refused, SnapshotReceiver
from kvstore.node.transport import PeerTransport


class PeerService(peer_pb2_grpc.PeerServicer):
    def __init__(
        self,
        transport: PeerTransport,
        snapshots: SnapshotReceiver,
        node_of: Callable[[Any], int | None] | None = None,
    ) -> None:
        self.transport = transport
        self.snapshots = snapshots
        self.node_of = node_of
        """The node id the caller's certificate names (None: not a node); unset: no TLS."""

    def _forged(self, context: Any, sender: int) -> str | None:
        if self.node_of is None:
            return None
        certified = self.node_of(context)
        if certified == sender:
            return None
        self.transport.metrics.rejected_batches.labels("peer_identity").inc()
        log.event("peer_batch_rejected", reason="peer_identity", sender=sender, cert=certified)
        return f"sender {sender} is not the node this certificate names (node {certified})"

    async def Stream(
        self, request_iterator: AsyncIterator[peer_pb2.PeerBatch], context: Any
    ) -> AsyncIterator[peer_pb2.PeerReply]:
        async for batch in request_iterator:
            error = self._forged(context, getattr(batch, "from"))
            if error is None:
                error = self.transport.receive(batch)
            if error is not None:
                yield peer_pb2.PeerReply(error=error)
                return

    async def SendSnapshot(
        self, request_iterator: AsyncIterator[peer_pb2.SnapshotChunk], context: Any
    ) -> AsyncIterator[peer_pb2.SnapshotAck]:
        chunks = request_iterator
        if self.node_of is not None:
            chunks = self._certified(request_iterator, context)
        async for ack in self.snapshots.serve(chunks):
            yield ack

    async def _certified(
        self, chunks: AsyncIterator[peer_pb2.SnapshotChunk], context: Any
    ) -> AsyncIterator[peer_pb2.SnapshotChunk]:
        async for chunk in chunks:
            if chunk.HasField("header"):
                error = self._forged(context, getattr(chunk.header, "from"))
                if error is not None:
                    raise Refused(error)
            yield chunk
