"""In-memory stores for testing workloads and checkers without a cluster."""

from __future__ import annotations

import asyncio
import random


def _b(x: bytes | str) -> bytes:
    return x if isinstance(x, bytes) else x.encode()


class FakeStore:
    """Linearizable: one dict, every operation atomic. ``stale``: eventual reads come from a
    copy that lags ``lag`` writes behind; ``lose_every``: every Nth acknowledged write is
    silently dropped (an ack-before-commit bug)."""

    def __init__(
        self, *, seed: int = 0, stale: bool = False, lag: int = 5, lose_every: int = 0
    ) -> None:
        self.data: dict[bytes, bytes] = {}
        self.replica: dict[bytes, bytes] = {}
        self.rng = random.Random(seed)
        self.stale = stale
        self.lag = lag
        self.lose_every = lose_every
        self.writes = 0

    async def _jitter(self) -> None:
        await asyncio.sleep(self.rng.uniform(0, 0.002))

    def _wrote(self) -> None:
        self.writes += 1
        if self.writes % self.lag == 0:
            self.replica = dict(self.data)

    async def get(self, key: bytes | str, read_mode: str = "strong") -> bytes | None:
        await self._jitter()
        src = self.replica if (self.stale and read_mode != "strong") else self.data
        v = src.get(_b(key))
        await self._jitter()
        return v

    async def put(self, key: bytes | str, value: bytes | str) -> int:
        await self._jitter()
        if not (self.lose_every and (self.writes + 1) % self.lose_every == 0):
            self.data[_b(key)] = _b(value)
        self._wrote()
        await self._jitter()
        return self.writes

    async def cas(
        self, key: bytes | str, expected: bytes | str | None, new: bytes | str | None
    ) -> bool:
        await self._jitter()
        cur = self.data.get(_b(key))
        ok = cur == (None if expected is None else _b(expected))
        if ok:
            if not (self.lose_every and (self.writes + 1) % self.lose_every == 0):
                if new is None:
                    self.data.pop(_b(key), None)
                else:
                    self.data[_b(key)] = _b(new)
            self._wrote()
        await self._jitter()
        return ok
