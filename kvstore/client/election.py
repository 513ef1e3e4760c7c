"""Leader election on leases (docs/leases.md): the leader of ``name`` is whoever holds the
key ``\\0election/<name>`` under a live lease; its value is what the leader proclaimed,
its create revision the term's fencing token.

Rule: as kvstore/client/lock.py: a leader that pauses past its TTL may still believe it
leads while its successor acts; act on shared state only with the token, and let the
state refuse tokens below one it has seen. ``observe`` polls (every ``poll`` seconds).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvstore.client import lock as _lock

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
        """Yield the leader now and on every change (None: no leader)."""
        last: Leader | bool | None = False
        while True:
            now = await self.leader()
            if now != last:
                last = now
                yield now
            await asyncio.sleep(poll)
