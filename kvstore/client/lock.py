"""A lock and a leader election on leases (docs/leases.md), async core.

Rule: the holder of a lock or an office is whoever created its key with a lease that is
still alive; the key's create revision is its FENCING TOKEN. A lease-based lock alone is
not mutual exclusion: a holder that pauses (GC, swap, a stopped VM) past its TTL still
believes it holds the lock while the next holder acts (Jepsen's etcd 3.4.3 analysis,
Kleppmann's "How to do distributed locking"). Only a resource that remembers the
highest token it has seen and refuses lower ones is safe: pass ``Lock.token`` with every
action the lock guards.

Waiting: a waiter watches the key from the revision it saw (kvstore/client/_watch.py)
until a delete, re-reading it at least every 5 s; where a watch fails (an older cluster,
a compacted history) it polls with backoff (50 ms doubling to 1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvstore.client._lease import KeepAlive
from kvstore.client._limits import to_bytes
from kvstore.client._watch import WatchEvent
from kvstore.client.errors import DeadlineExceeded, KVError

if TYPE_CHECKING:
    from kvstore.client._async import AsyncClient

LOCK_PREFIX = b"\x00lock/"
ELECTION_PREFIX = b"\x00election/"
POLL_FIRST_S = 0.05
POLL_MAX_S = 1.0
WATCH_RECHECK_S = 5.0
"""A waiter re-reads the key at least this often even if its watch reports nothing."""


class LockTimeout(DeadlineExceeded):
    """The lock (or office) was not won within ``timeout``; nothing is held."""

    def __init__(self, message: str) -> None:
        super().__init__(message, definite=True)


@dataclass(slots=True)
class Held:
    """A lock or office held: its key, value, lease and fencing token."""

    key: bytes
    value: bytes
    lease: int
    token: int
    """The revision that created the key: larger for every later holder of the same key.
    Hand it to the guarded resource, which must refuse any token below one it saw."""
    keep_alive: KeepAlive

    @property
    def lost(self) -> bool:
        """The lease is gone (expired or revoked): the lock is no longer held."""
        return self.keep_alive.lost.is_set()


def _name(prefix: bytes, name: bytes | str) -> bytes:
    return prefix + to_bytes(name)


async def acquire(
    c: AsyncClient,
    key: bytes,
    value: bytes,
    ttl: float,
    timeout: float | None,
) -> Held:
    """Create ``key`` = ``value`` under a fresh lease once it is absent; waits (polling)
    for at most ``timeout`` seconds (None: for ever)."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    lease = await c.grant(ttl)
    ka = c.keep_alive_background(lease, ttl)
    pause = POLL_FIRST_S
    try:
        while True:
            held = await _try(c, key, value, lease, ka)
            if held is not None:
                return held
            if deadline is not None and loop.time() >= deadline:
                raise LockTimeout(f"{key!r} not acquired within {timeout}s")
            kv = await c.get_kv(key)
            if kv is None:
                continue  # released meanwhile: try again at once
            limit = WATCH_RECHECK_S if deadline is None else deadline - loop.time()
            if await _deleted(c, key, kv.mod_revision, min(limit, WATCH_RECHECK_S)):
                pause = POLL_FIRST_S
                continue
            # No watch (an older cluster, compacted history, or it broke): poll.
            wait = random.uniform(0.5, 1.0) * pause
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - loop.time()))
            await asyncio.sleep(wait)
            pause = min(pause * 2, POLL_MAX_S)
    except BaseException:
        await ka.stop()
        await _revoke_quietly(c, lease)
        raise


async def _deleted(c: AsyncClient, key: bytes, revision: int, limit: float) -> bool:
    """Wait up to ``limit`` s for ``key`` to be deleted after ``revision`` (a watch).
    True once it was, or once the wait ran out (the caller retries either way); False
    when the watch failed (the caller polls instead)."""
    try:
        async with c.watch(key, start_revision=revision + 1) as w:

            async def first_delete() -> None:
                async for ev in w:
                    if isinstance(ev, WatchEvent) and ev.type == "delete":
                        return

            await asyncio.wait_for(first_delete(), max(0.0, limit))
    except TimeoutError:
        return True
    except KVError:
        return False
    return True


async def _try(c: AsyncClient, key: bytes, value: bytes, lease: int, ka: KeepAlive) -> Held | None:
    try:
        r = await c.cas_response(key, None, value, lease)
    except KVError as e:
        if e.definite:
            raise
        # It may have applied: the key tells (our value is unique to this attempt).
        kv = await c.get_kv(key)
        if kv is not None and kv.value == value:
            return Held(key, value, lease, kv.create_revision, ka)
        return None
    if r.succeeded:
        return Held(key, value, lease, r.revision, ka)
    return None


async def release(c: AsyncClient, held: Held) -> None:
    """Give the lock up: delete the key if it is still ours, then revoke the lease."""
    await held.keep_alive.stop()
    try:
        await c.cas(held.key, held.value, None)
    finally:
        await _revoke_quietly(c, held.lease)


async def _revoke_quietly(c: AsyncClient, lease: int) -> None:
    with contextlib.suppress(KVError):  # else it expires on its own within its TTL
        await c.revoke(lease)


def unique_value(value: bytes | str | None = None) -> bytes:
    """``value`` with a random suffix, so a holder recognises its own key."""
    tag = os.urandom(8).hex().encode()
    if value is None:
        return tag
    return to_bytes(value) + b"#" + tag


def lock_key(name: bytes | str) -> bytes:
    return _name(LOCK_PREFIX, name)


def election_key(name: bytes | str) -> bytes:
    return _name(ELECTION_PREFIX, name)


def strip_tag(value: bytes) -> bytes:
    """The value a candidate proclaimed (without the uniqueness tag)."""
    head, sep, _ = value.rpartition(b"#")
    return head if sep else value
