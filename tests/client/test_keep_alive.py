"""The background keep-alive (client/_lease.py KeepAlive) keeps renewing on schedule while
one renewal hangs (a slow shard, an election), and reports the lease lost at once when a
renewal says it is gone. The renewal call is replaced by a stand-in here: what is under
test is the schedule, not the cluster (tests/integration/test_leases.py has that)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kvstore.client import _lease
from kvstore.client.errors import NotFound


def test_a_hung_renewal_does_not_hold_back_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []

    async def renew(c: Any, lease: int) -> float:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            await asyncio.sleep(3.0)  # the first renewal waits out a long timeout
        return 1.0

    monkeypatch.setattr(_lease, "keep_alive", renew)

    async def main() -> None:
        ka = _lease.KeepAlive(None, 7, 1.0).start()  # type: ignore[arg-type]
        await asyncio.sleep(1.6)
        assert len(calls) >= 4  # every TTL/3, the hung one notwithstanding
        assert not ka.lost.is_set()
        await ka.stop()

    asyncio.run(main())


def test_a_lease_reported_gone_is_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    async def renew(c: Any, lease: int) -> float:
        raise NotFound("lease 7 not found")

    monkeypatch.setattr(_lease, "keep_alive", renew)

    async def main() -> None:
        ka = _lease.KeepAlive(None, 7, 1.0).start()  # type: ignore[arg-type]
        await asyncio.wait_for(ka.lost.wait(), 2.0)
        assert isinstance(ka.error, NotFound)
        await ka.stop()

    asyncio.run(main())
