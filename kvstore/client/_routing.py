"""Client-side shard routing: the cached shard map and per-shard leaders.

Rules:
- The map is fetched once (admin ShardMap from any endpoint) and then corrected from the
  stale-route errors nodes answer with (they carry the fresh descriptors); it is refetched
  when a key has no shard in the cache. An empty map means an unsharded cluster: the
  client then works exactly as before sharding.
- Every op carries the shard id and version it was routed with, inside the caller's one
  deadline; a stale route is certain not to have applied, so retrying it is always safe,
  and a write keeps its (client_id, seq) across retries (exactly-once).
- Causal tokens are not per shard: one hybrid clock time serves every shard
  (_session.py), set on the op before it is routed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from kvstore._pb import admin_pb2, admin_pb2_grpc, kv_pb2
from kvstore.client._stream import CHANNEL_OPTIONS, StreamBroken
from kvstore.client.errors import (
    DeadlineExceeded,
    KVError,
    NotLeader,
    SessionExpired,
    Unavailable,
    from_error,
)
from kvstore.security.tls import open_channel
from kvstore.shard.descriptor import Descriptor, Epoch
from kvstore.shard.shardmap import ShardMap

if TYPE_CHECKING:
    from kvstore.client._async import AsyncClient

_NOT_LEADER = grpc.StatusCode.FAILED_PRECONDITION.value[0]
_ABORTED = grpc.StatusCode.ABORTED.value[0]
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE.value[0],
    grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
}

SERVER_SCAN_LIMIT = 10000
"""A scan with limit 0 returns at most this many keys, as one unsharded scan would."""

Route = Callable[[kv_pb2.Op, "ShardCache"], Descriptor | None]


def from_pb(d: kv_pb2.ShardDescriptor) -> Descriptor:
    return Descriptor(
        id=d.id,
        start=d.start,
        end=d.end,
        epoch=Epoch(d.version or 1, d.conf_ver or 1),
        voters=tuple(d.voters),
        learners=tuple(d.learners),
    )


class ShardCache:
    def __init__(self) -> None:
        self.map = ShardMap()
        self.nodes: dict[int, str] = {}
        self.leaders: dict[int, str] = {}

    def load(self, resp: admin_pb2.ShardMapResponse) -> None:
        self.map = ShardMap([from_pb(d) for d in resp.shards])
        self.nodes.update(resp.nodes)

    def learn(self, shards: Any) -> bool:
        """Take newer descriptors from a stale-route error; True if any was new."""
        return bool(self.map.report([from_pb(d) for d in shards], keep_tiling=False))

    def endpoints(self, d: Descriptor) -> list[str]:
        out = [self.leaders.get(d.id, "")]
        out += [self.nodes.get(n, "") for n in (*d.voters, *d.learners)]
        return [e for i, e in enumerate(out) if e and e not in out[:i]]


def route_key(key: bytes) -> Route:
    def route(op: kv_pb2.Op, cache: ShardCache) -> Descriptor | None:
        return cache.map.lookup(key)

    return route


def route_op(op: kv_pb2.Op) -> Route:
    """A key op goes to its key's shard; a lease op to the shard it names (_lease.py)."""
    kind = op.WhichOneof("request") or ""
    if kind.startswith("lease_"):
        shard = op.shard

        def route(op: kv_pb2.Op, cache: ShardCache) -> Descriptor | None:
            return cache.map.get(shard)

        return route
    return route_key(getattr(op, kind).key)


def route_scan(end: bytes) -> Route:
    """A scan goes to the shard of its start, clipped to that shard's end."""

    def route(op: kv_pb2.Op, cache: ShardCache) -> Descriptor | None:
        d = cache.map.lookup(op.scan.start)
        if d is not None:
            clip = d.end if d.end and (not end or d.end < end) else end
            op.scan.end = clip
        return d

    return route


class ShardRouter:
    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.cache = ShardCache()
        self.sharded: bool | None = None
        """None until a map fetch answers; False: an unsharded cluster."""
        self.detected = False
        """A node showed the cluster is sharded (fetch the map before the next call)."""
        self._fetching: asyncio.Future[None] | None = None
        self._next = random.randrange(1 << 16)

    async def fetch(self, deadline: float) -> None:
        """Fetch the map from any endpoint (sets ``sharded``); raises Unavailable.
        Concurrent callers share one fetch."""
        if self._fetching is not None:
            await asyncio.shield(self._fetching)
            return
        fut = self._fetching = asyncio.get_running_loop().create_future()
        try:
            await self._fetch(deadline)
            fut.set_result(None)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: waiters see it, no "never retrieved" warning
            raise
        finally:
            self._fetching = None

    async def _fetch(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        last = "no endpoint answered"
        health = self.client._health
        known = [*self.client.endpoints, *self.cache.nodes.values()]
        order = list(dict.fromkeys(known))
        order.sort(key=lambda e: not health.is_up(e))
        for ep in order:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with open_channel(ep, CHANNEL_OPTIONS, self.client.tls) as ch:
                    resp = await admin_pb2_grpc.AdminStub(ch).ShardMap(
                        admin_pb2.ShardMapRequest(), timeout=min(remaining, 1.0)
                    )
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self.sharded = False  # a node from before sharding
                    return
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    health.mark_down(ep, e.code().name)
                last = f"{ep}: {e.code().name}: {e.details()}"
                continue
            self.cache.load(resp)
            self.sharded = len(self.cache.map) > 0
            return
        raise Unavailable(f"cannot fetch the shard map ({last})", definite=True)

    def observe(self, hdr: kv_pb2.ResponseHeader) -> None:
        if hdr.shard_version and not self.sharded:
            self.detected = True

    def _pick(self, d: Descriptor, anywhere: bool, turn: int) -> str:
        every = self.cache.endpoints(d)
        eps = [e for e in every if self.client._health.is_up(e)] or every
        if not eps:
            return self.client.endpoints[turn % len(self.client.endpoints)]
        if anywhere:
            # One replica per client and shard, kept while it answers (big batches).
            mine = self.client._replica
            if turn == 0 and mine in eps:
                return mine
            return eps[(self._next + turn) % len(eps)]
        return eps[turn % len(eps)]

    async def execute(
        self,
        op: kv_pb2.Op,
        *,
        write: bool,
        anywhere: bool,
        route: Route,
        maybe_applied: bool = False,
    ) -> kv_pb2.OpResult:
        """Run one op on the shard ``route`` picks, with redirects, map refreshes and
        retries until it succeeds or the client's deadline passes."""

        c = self.client
        loop = asyncio.get_running_loop()
        deadline = loop.time() + c.timeout
        last: KVError | None = None
        turn = 0
        pause = False
        hinted: set[str] = set()
        for attempt in itertools.count():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if pause:
                await asyncio.sleep(
                    min(remaining, random.uniform(0.5, 1.0) * min(0.02 * 2 ** min(attempt, 8), 0.5))
                )
            pause = True
            d = route(op, self.cache)
            if d is None:
                try:
                    await self.fetch(deadline)
                except KVError as e:
                    last = e
                    continue
                d = route(op, self.cache)
                if d is None:
                    continue
            op.shard, op.shard_version = d.id, d.epoch.version
            endpoint = self._pick(d, anywhere, turn)
            if attempt and write and not maybe_applied and not await c.reissue_seq(op, deadline):
                # Every attempt certainly failed: a fresh seq is as safe (see _async.py);
                # none came before the deadline.
                break
            budget = min(deadline - loop.time(), c.attempt_timeout)
            op.timeout_ms = max(1, int(budget * 1000))
            stream = c._stream(endpoint)
            fut = stream.submit(op)
            timer = loop.call_later(budget, _expire, fut)
            try:
                result = await fut
            except TimeoutError:
                sent = stream.forget(op.id)
                maybe_applied = maybe_applied or (write and sent)
                last = DeadlineExceeded(f"no answer from {endpoint}", definite=not maybe_applied)
                self.cache.leaders.pop(d.id, None)
                turn += 1
                continue
            except StreamBroken as e:
                timer.cancel()
                maybe_applied = maybe_applied or (write and e.sent)
                last = Unavailable(str(e), definite=not maybe_applied)
                c._health.mark_down(endpoint, str(e))
                self.cache.leaders.pop(d.id, None)
                turn += 1
                continue
            timer.cancel()
            c._health.mark_up(endpoint)
            if not result.HasField("error"):
                if not anywhere:
                    self.cache.leaders[d.id] = endpoint
                return result
            err = result.error
            if err.session_expired:
                raise SessionExpired(err.message, definite=not maybe_applied)
            maybe_applied = maybe_applied or (write and not err.definite)
            last = from_error(err, definite=err.definite and not maybe_applied)
            if err.stale_route or err.code == _ABORTED:
                if not self.cache.learn(err.shards):
                    with contextlib.suppress(KVError):
                        await self.fetch(deadline)
                pause = attempt > 2  # the fix is usually in hand: retry at once
                turn = 0
                continue
            if err.code == _NOT_LEADER:
                if err.leader_endpoint and err.leader_endpoint != endpoint:
                    self.cache.leaders[d.id] = err.leader_endpoint
                    turn = 0
                    # Follow a fresh hint at once; hints that go round in circles (an
                    # election under way) back off.
                    pause = err.leader_endpoint in hinted
                    hinted.add(err.leader_endpoint)
                else:
                    self.cache.leaders.pop(d.id, None)
                    turn += 1
                continue
            if err.code in _RETRYABLE:
                if err.code != grpc.StatusCode.DEADLINE_EXCEEDED.value[0]:
                    turn += 1
                continue
            raise last
        if last is not None and not isinstance(last, NotLeader | Unavailable):
            last.definite = last.definite and not maybe_applied
        raise DeadlineExceeded(
            f"operation did not complete within {c.timeout}s"
            + (f" (last error: {last.message})" if last is not None else ""),
            definite=not maybe_applied,
        )

    async def scan(
        self, start: bytes, end: bytes, limit: int, mode: kv_pb2.ReadMode.ValueType
    ) -> list[kv_pb2.KeyValue]:
        """Keys in [start, end) across shards, in key order, at most ``limit`` (0: the
        server's per-request limit, applied to the whole scan)."""
        out: list[kv_pb2.KeyValue] = []
        cap = limit if limit > 0 else SERVER_SCAN_LIMIT
        cursor = start
        while True:
            want = cap - len(out)
            op = kv_pb2.Op(
                scan=kv_pb2.ScanRequest(start=cursor, end=end, limit=want, read_mode=mode)
            )
            self.client._session.carry(op, write=False)
            r = (
                await self.execute(
                    op,
                    write=False,
                    anywhere=mode != kv_pb2.READ_MODE_STRONG,
                    route=route_scan(end),
                )
            ).scan
            self.client._observe(r.header)
            out.extend(r.kvs)
            if len(out) >= cap:
                return out[:cap]
            if r.more and r.kvs:
                cursor = r.kvs[-1].key + b"\0"
                continue
            shard_end = op.scan.end
            if not shard_end or (end and shard_end >= end):
                return out
            cursor = shard_end


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())
