"""Leader election on leases (docs/leases.md): the leader of ``name`` is whoever holds the
key ``\\0election/<name>`` under a live lease; its value is what the leader proclaimed,
its create revision the term's fencing token.

Rule: as kvstore/client/lock.py: a leader that pauses past its TTL may still believe it
leads while its successor acts; act on shared state only with the token, and let the
state refuse tokens below one it has seen.

Observing: ``observe`` follows the key with a watch (docs/watch.md) and reads the leader
again after each change, and at least every WATCH_RECHECK_S seconds; it polls every
``poll`` seconds only until the watch is up, and for good where the watch fails (an
older cluster). Each read is linearizable, so it never yields an older leader after a
newer one; a leader that comes and goes between two reads may be passed over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvstore.client import lock as _lock
from kvstore.client._watch import AsyncWatcher
from kvstore.client.errors import Compacted, KVError

if TYPE_CHECKING:
    from kvstore.client._async import AsyncClient


@dataclass(frozen=True, slots=True)
class Leader:
    value: bytes
    """What the leader proclaimed when it campaigned."""
    token: int
    """The revision its term began at (its fencing token)."""


class AsyncElection:
    def __init__(self, client: AsyncClient, name: bytes | str, ttl: float = 10.0) -> None:
        self.client = client
        self.key = _lock.election_key(name)
        self.ttl = ttl
        self.held: _lock.Held | None = None

    async def campaign(self, value: bytes | str, timeout: float | None = None) -> int:
        """Block until this candidate leads (LockTimeout after ``timeout`` s); returns the
        term's fencing token."""
        if self.held is not None and not self.held.lost:
            return self.held.token
        tagged = _lock.unique_value(value)
        self.held = await _lock.acquire(self.client, self.key, tagged, self.ttl, timeout)
        return self.held.token

    @property
    def leading(self) -> bool:
        """This candidate won and its lease is still alive (as far as it knows)."""
        return self.held is not None and not self.held.lost

    async def resign(self) -> None:
        """Step down (the next candidate takes over at once)."""
        held, self.held = self.held, None
        if held is not None:
            await _lock.release(self.client, held)

    async def leader(self) -> Leader | None:
        """The current leader (a linearizable read), or None."""
        kv = await self.client.get_kv(self.key)
        if kv is None:
            return None
        return Leader(_lock.strip_tag(kv.value), kv.create_revision)

    async def observe(self, poll: float = 0.2) -> AsyncIterator[Leader | None]:
        """Yield the leader now and on every change (None: no leader); see the module
        docstring for how it follows the key (``poll``: the fallback's period)."""
        last: Leader | bool | None = False
        watch: AsyncWatcher | None = self._watch()
        item: asyncio.Task[object] | None = None
        live = False  # the stream is up (its first message came): changes come as items
        try:
            while True:
                now = await self.leader()
                if now != last:
                    last = now
                    yield now
                if watch is None:
                    await asyncio.sleep(poll)
                    continue
                if item is None:
                    # One pending read of the watch across the waits: cancelling it
                    # midway could leave the watcher half started.
                    item = asyncio.ensure_future(_next(watch))
                wait = _lock.WATCH_RECHECK_S if live else poll
                done, _ = await asyncio.wait({item}, timeout=wait)
                if not done:
                    continue  # read again (the recheck, or a poll until the watch is up)
                got, item = item, None
                try:
                    got.result()  # a change, or a progress notification: read again
                    live = True
                except Compacted:
                    # Its resume point is gone (a long outage): watch again from now,
                    # after reading again.
                    await watch.close()
                    watch, live = self._watch(), False
                except KVError:
                    # No watch here (an older cluster, say): poll from now on.
                    await watch.close()
                    watch = None
        finally:
            if item is not None:
                item.cancel()
                with contextlib.suppress(BaseException):
                    await item
            if watch is not None:
                await watch.close()

    def _watch(self) -> AsyncWatcher:
        return self.client.watch(
            self.key, progress_notify=True, progress_interval=_lock.WATCH_RECHECK_S
        )


async def _next(watch: AsyncWatcher) -> object:
    return await watch.__anext__()
