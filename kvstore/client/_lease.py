"""Client leases: grant, keep-alive, revoke, time-to-live and list, and a background
keep-alive.

Rule (docs/leases.md): on a sharded cluster a lease lives in every shard (its id is
picked here, the same for all), so a key of any shard can be put with it; keep-alive and
revoke go to every shard, and a lease counts as alive only while every shard holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvstore._pb import kv_pb2
from kvstore.client.errors import KVError, NotFound

if TYPE_CHECKING:
    from kvstore.client._async import AsyncClient

MAX_LEASE_ID = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    id: int
    ttl: float
    """Seconds granted."""
    remaining: float
    """Seconds the leader's clock has left of it (the least of the shards')."""
    keys: list[bytes] = field(default_factory=list)


async def _groups(c: AsyncClient) -> list[int]:
    """The shards a lease op goes to: [0] (the only group) on an unsharded cluster."""
    r = c._router
    if r.sharded is None:
        await r.fetch(asyncio.get_running_loop().time() + c.timeout)
    if not r.sharded:
        return [0]
    return sorted(d.id for d in r.cache.map)


async def _each(c: AsyncClient, make: kv_pb2.Op, *, write: bool) -> list[kv_pb2.OpResult]:
    ops = []
    for g in await _groups(c):
        op = kv_pb2.Op()
        op.CopyFrom(make)
        op.shard = g
        ops.append(op)
    return list(await asyncio.gather(*(c._execute(op, write=write) for op in ops)))


def _ms(ttl: float) -> int:
    return max(0, round(ttl * 1000))


async def grant(c: AsyncClient, ttl: float, lease_id: int = 0) -> int:
    """A new lease of ``ttl`` seconds (at least 1); returns its id."""
    lease = lease_id or random.SystemRandom().randrange(1, MAX_LEASE_ID + 1)
    req = kv_pb2.LeaseGrantRequest(
        id=lease, ttl_ms=_ms(ttl), client_id=c.client_id, incarnation=c.incarnation
    )
    for r in await _each(c, kv_pb2.Op(lease_grant=req), write=True):
        c._observe(r.lease_grant.header)
    return lease


async def keep_alive(c: AsyncClient, lease: int) -> float:
    """Renew ``lease`` once; returns its TTL in seconds. NotFound: it expired or was revoked
    (on some shard: its keys there are gone)."""
    req = kv_pb2.LeaseKeepAliveRequest(id=lease)
    results = await _each(c, kv_pb2.Op(lease_keep_alive=req), write=False)
    return min(r.lease_keep_alive.ttl_ms for r in results) / 1000


async def revoke(c: AsyncClient, lease: int) -> bool:
    """Revoke ``lease``: its keys are deleted at once. False when no shard held it."""
    req = kv_pb2.LeaseRevokeRequest(id=lease, client_id=c.client_id, incarnation=c.incarnation)
    results = await _each(c, kv_pb2.Op(lease_revoke=req), write=True)
    for r in results:
        c._observe(r.lease_revoke.header)
    return any(r.lease_revoke.revoked for r in results)


async def time_to_live(c: AsyncClient, lease: int, keys: bool = False) -> LeaseInfo | None:
    """What ``lease`` has left (None: it does not exist), with its keys if asked."""
    req = kv_pb2.LeaseTimeToLiveRequest(id=lease, keys=keys)
    results = await _each(c, kv_pb2.Op(lease_time_to_live=req), write=False)
    held = [r.lease_time_to_live.lease for r in results if r.lease_time_to_live.HasField("lease")]
    if not held or len(held) < len(results):
        return None
    return LeaseInfo(
        lease,
        max(s.ttl_ms for s in held) / 1000,
        min(s.remaining_ms for s in held) / 1000,
        sorted(k for s in held for k in s.keys),
    )


async def leases(c: AsyncClient) -> list[LeaseInfo]:
    """Every lease, by id."""
    results = await _each(c, kv_pb2.Op(lease_list=kv_pb2.LeaseListRequest()), write=False)
    found: dict[int, LeaseInfo] = {}
    for r in results:
        for s in r.lease_list.leases:
            old = found.get(s.id)
            left = (
                s.remaining_ms / 1000 if old is None else min(old.remaining, s.remaining_ms / 1000)
            )
            found[s.id] = LeaseInfo(s.id, s.ttl_ms / 1000, left)
    return [found[i] for i in sorted(found)]


class KeepAlive:
    """Renews a lease every third of its TTL until stopped, or until the lease is gone
    (``lost`` is set then: its keys may be deleted; a lock built on it is no longer held;
    also set, while renewals go on, once none SENT within the last TTL has succeeded).
    Renewals are sent on that schedule whether or not the previous one answered: one that
    waits on a slow shard or an election must not hold back the next (with a 1 s TTL, a
    renewal stuck for the client's 2 s timeout let a lease lapse in a Jepsen run)."""

    def __init__(self, c: AsyncClient, lease: int, ttl: float) -> None:
        self.client = c
        self.lease = lease
        self.ttl = ttl
        self.lost = asyncio.Event()
        self.error: KVError | None = None
        self._task: asyncio.Task[None] | None = None
        self._renewed = 0.0

    def start(self) -> KeepAlive:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"keep-alive-{self.lease}")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _renew(self) -> None:
        # The leader restarted the lease somewhere between this send and the answer:
        # only the send time bounds it from below. Counting from the answer (late after
        # a slow commit or a pause of this process) would report the lease held past
        # the moment the leader may expire it.
        sent = asyncio.get_running_loop().time()
        try:
            ttl = await keep_alive(self.client, self.lease)
        except NotFound as e:
            self.error = e
            self.lost.set()
        except KVError as e:
            self.error = e
        else:
            self.ttl = ttl
            self._renewed = max(self._renewed, sent)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._renewed = loop.time()
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                t = asyncio.create_task(self._renew())
                pending.add(t)
                t.add_done_callback(pending.discard)
                await asyncio.sleep(self.ttl / 3)
                if self.lost.is_set() and isinstance(self.error, NotFound):
                    return
                if loop.time() - self._renewed > self.ttl:
                    self.lost.set()  # the leader may have expired it; keep trying anyway
        finally:
            for t in list(pending):
                t.cancel()
