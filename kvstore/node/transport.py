"""Node-to-node transport: one outbound gRPC stream per peer carrying batched messages.

Rules:
- Sending never blocks the caller: messages are queued per peer and one writer task
  per peer packs everything queued into one PeerBatch (all groups) per write.
- Consensus tolerates loss, so a message that cannot be sent (peer down, queue full)
  is dropped and counted, never retried by the transport; ``on_lost`` tells the driver,
  so a leader stops streaming to that peer and resends a lost snapshot sooner.
- Inbound batches are checked before any message reaches a core: the cluster id on
  every batch, the sender among the known nodes, the addressee is us. A rejected batch
  is counted and answered with a PeerReply naming the reason; junk never raises.
- Snapshots do not travel here: a message carrying one is dropped (counted); images go
  by the SendSnapshot stream (snapshot_send.py / snapshot_recv.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import grpc.aio

from kvstore._pb import peer_pb2, peer_pb2_grpc
from kvstore.consensus.types import Message
from kvstore.node import log
from kvstore.node.failure import PhiAccrual
from kvstore.node.metrics import NodeMetrics
from kvstore.node.wire import WireError, message_from_pb, message_to_pb
from kvstore.security.tls import ChannelTLS, node_name, open_channel

MAX_PEER_MESSAGE = 256 << 20
BATCH_SOFT_BYTES = 8 << 20
MAX_QUEUE = 20000

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_PEER_MESSAGE),
    ("grpc.max_receive_message_length", MAX_PEER_MESSAGE),
    ("grpc.keepalive_time_ms", 10000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def _by_group(msgs: list[Message]) -> dict[int, int]:
    out: dict[int, int] = {}
    for m in msgs:
        out[m.group] = out.get(m.group, 0) + 1
    return out


def _approx_size(m: Message) -> int:
    n = 64 + sum(e.size() for e in m.entries) + len(m.context)
    if m.snapshot is not None:
        n += len(m.snapshot.data)
    return n


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfo:
    id: int
    endpoint: str
    connected: bool
    phi: float
    state: str


class _Link:
    """The outbound stream to one peer, reconnecting with capped exponential backoff."""

    def __init__(self, owner: PeerTransport, peer_id: int, endpoint: str) -> None:
        self.owner = owner
        self.peer_id = peer_id
        self.endpoint = endpoint
        self.queue: list[Message] = []
        self.ready = asyncio.Event()
        self.connected = False
        self.task: asyncio.Task[None] | None = None

    def enqueue(self, msgs: list[Message]) -> None:
        if not self.connected and self.task is not None:
            self.owner.count_drop(msgs, "unreachable")
            return
        if len(self.queue) + len(msgs) > MAX_QUEUE:
            self.owner.count_drop(msgs, "queue_full")
            return
        self.queue.extend(msgs)
        self.ready.set()

    async def run(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any transport failure: reconnect
                if self.connected:
                    log.event("peer_disconnected", peer=self.peer_id, error=type(exc).__name__)
            self._set_connected(False)
            if self.queue:
                self.owner.count_drop(self.queue, "unreachable")
                self.queue = []
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
            if self.owner.reset_backoff.pop(self.peer_id, False):
                backoff = 0.05

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        self.owner.metrics.peer_connected.labels(str(self.peer_id)).set(1 if up else 0)

    async def _session(self) -> None:
        o = self.owner
        # With TLS the peer must prove it is node-<id>, whatever address it answers on.
        name = node_name(self.peer_id) if o.tls is not None else None
        async with open_channel(self.endpoint, CHANNEL_OPTIONS, o.tls, name) as channel:
            stub = peer_pb2_grpc.PeerStub(channel)
            call = stub.Stream()
            reader = asyncio.create_task(self._read_replies(call))
            try:
                # An empty batch first: the stream is up once it is written.
                await call.write(self._batch([]))
                self._set_connected(True)
                o.reset_backoff[self.peer_id] = True
                log.event("peer_connected", peer=self.peer_id, endpoint=self.endpoint)
                while True:
                    if reader.done():
                        reader.result()
                        raise ConnectionError("peer closed the stream")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.ready.wait(), o.heartbeat_s)
                    self.ready.clear()
                    msgs, self.queue = self.queue, []
                    # An empty batch is the transport heartbeat of the failure detector.
                    for chunk in self._chunks(msgs):
                        await call.write(self._batch(chunk))
                        o.count_sent(chunk)
            finally:
                reader.cancel()
                call.cancel()

    def _chunks(self, msgs: list[Message]) -> list[list[Message]]:
        if not msgs:
            return [[]]
        out: list[list[Message]] = [[]]
        size = 0
        for m in msgs:
            s = _approx_size(m)
            if out[-1] and size + s > BATCH_SOFT_BYTES:
                out.append([])
                size = 0
            out[-1].append(m)
            size += s
        return out

    def _batch(self, msgs: list[Message]) -> peer_pb2.PeerBatch:
        o = self.owner
        return peer_pb2.PeerBatch(
            cluster_id=o.cluster_id,
            to=self.peer_id,
            sent_us=int(time.time() * 1e6),
            messages=[message_to_pb(m) for m in msgs],
            **{"from": o.node_id},
        )

    async def _read_replies(self, call: grpc.aio.StreamStreamCall) -> None:
        async for reply in call:
            log.event("peer_rejected_us", peer=self.peer_id, error=reply.error)
            raise ConnectionError(f"peer {self.peer_id} rejected our stream: {reply.error}")


class PeerTransport:
    def __init__(
        self,
        *,
        node_id: int,
        cluster_id: str,
        peers: dict[int, str],
        metrics: NodeMetrics,
        deliver: Callable[[list[Message]], None],
        heartbeat_s: float = 0.25,
        tls: ChannelTLS | None = None,
    ) -> None:
        self.node_id = node_id
        self.tls = tls
        self.cluster_id = cluster_id
        self.metrics = metrics
        self.heartbeat_s = heartbeat_s
        self._deliver = deliver
        self.on_lost: Callable[[list[Message]], None] = lambda msgs: None
        self.reset_backoff: dict[int, bool] = {}
        self.endpoints: dict[int, str] = dict(peers)
        self._links: dict[int, _Link] = {}
        self._detectors: dict[int, PhiAccrual] = {}
        for pid, ep in peers.items():
            if pid != node_id:
                self._links[pid] = _Link(self, pid, ep)
                self._detectors[pid] = PhiAccrual(min_interval=heartbeat_s)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        for link in self._links.values():
            if link.task is None:
                link.task = asyncio.create_task(link.run(), name=f"peer-{link.peer_id}")

    async def stop(self) -> None:
        tasks = [link.task for link in self._links.values() if link.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def add_peer(self, peer_id: int, endpoint: str) -> None:
        if peer_id == self.node_id:
            return
        old = self._links.get(peer_id)
        if old is not None and old.endpoint == endpoint:
            return
        if old is not None and old.task is not None:
            old.task.cancel()
        self.endpoints[peer_id] = endpoint
        link = self._links[peer_id] = _Link(self, peer_id, endpoint)
        self._detectors.setdefault(peer_id, PhiAccrual(min_interval=self.heartbeat_s))
        if any(other.task is not None for other in self._links.values() if other is not link):
            link.task = asyncio.create_task(link.run(), name=f"peer-{peer_id}")

    # -- outbound --------------------------------------------------------------
    def send(self, msgs: list[Message]) -> None:
        by_dest: dict[int, list[Message]] = {}
        for m in msgs:
            by_dest.setdefault(m.to, []).append(m)
        for to, batch in by_dest.items():
            link = self._links.get(to)
            if link is None:
                self.count_drop(batch, "unknown_peer")
            else:
                link.enqueue(batch)

    def count_sent(self, msgs: list[Message]) -> None:
        for group, n in _by_group(msgs).items():
            self.metrics.sent.labels(self.metrics.shard(group)).inc(n)

    def count_drop(self, msgs: list[Message], reason: str) -> None:
        for group, n in _by_group(msgs).items():
            self.metrics.dropped.labels(self.metrics.shard(group), reason).inc(n)
        if reason in ("unreachable", "queue_full"):
            self.on_lost(msgs)

    # -- inbound ---------------------------------------------------------------
    def knows(self, peer_id: int) -> bool:
        return peer_id in self._detectors

    def receive(self, batch: peer_pb2.PeerBatch) -> str | None:
        """Check and deliver one inbound batch; returns the rejection reason, if any."""
        sender = getattr(batch, "from")
        if batch.cluster_id != self.cluster_id:
            self.metrics.rejected_batches.labels("cluster_id").inc()
            log.event(
                "peer_batch_rejected", reason="cluster_id", got=batch.cluster_id, sender=sender
            )
            return f"cluster id mismatch: this is {self.cluster_id!r}, got {batch.cluster_id!r}"
        if sender not in self._detectors or batch.to != self.node_id:
            self.metrics.rejected_batches.labels("unknown_node").inc()
            log.event("peer_batch_rejected", reason="unknown_node", sender=sender, to=batch.to)
            return f"unknown sender {sender} or wrong addressee {batch.to} (this is {self.node_id})"
        self._detectors[sender].heartbeat(time.monotonic())
        msgs: list[Message] = []
        for pb in batch.messages:
            try:
                m = message_from_pb(pb)
            except WireError:
                self.metrics.dropped.labels(self.metrics.shard(pb.group), "malformed").inc()
                continue
            if m.from_ != sender or m.to != self.node_id:
                self.metrics.dropped.labels(self.metrics.shard(m.group), "bad_address").inc()
                continue
            if m.snapshot is not None:
                # Snapshots come only by SendSnapshot (node/snapshot_recv.py), verified.
                self.metrics.dropped.labels(self.metrics.shard(m.group), "snapshot_inline").inc()
                continue
            msgs.append(m)
        if msgs:
            for group, n in _by_group(msgs).items():
                self.metrics.received.labels(self.metrics.shard(group)).inc(n)
            self._deliver(msgs)
        return None

    # -- status ----------------------------------------------------------------
    def peer_alive(self, peer: int) -> bool:
        """Whether the failure detector judges ``peer`` alive now."""
        det = self._detectors.get(peer)
        return det is not None and det.state(time.monotonic()) == "alive"

    def peer_status(self) -> list[PeerInfo]:
        now = time.monotonic()
        out = []
        for pid, link in sorted(self._links.items()):
            det = self._detectors[pid]
            phi = det.phi(now)
            self.metrics.peer_phi.labels(str(pid)).set(min(phi, 1e9))
            out.append(
                PeerInfo(
                    id=pid,
                    endpoint=link.endpoint,
                    connected=link.connected,
                    phi=phi,
                    state=det.state(now),
                )
            )
        return out
