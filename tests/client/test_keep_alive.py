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


def test_a_late_answer_counts_from_its_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """The only renewal that succeeds is answered just under a TTL after it was sent (a
    slow commit, or this process paused while the answer waited); every later one hangs.
    The leader restarted the lease somewhere between that send and its answer, so it may
    expire one TTL after the SEND: ``lost`` must be set by then (the check after it), not
    a TTL after the answer (the old accounting: a lock holder acting up to a TTL after the
    leader may have expired its lease)."""
    calls: list[float] = []

    async def renew(c: Any, lease: int) -> float:
        calls.append(asyncio.get_running_loop().time())
        await asyncio.sleep(5.8 if len(calls) == 1 else 60.0)
        return 6.0

    monkeypatch.setattr(_lease, "keep_alive", renew)

    async def main() -> None:
        ka = _lease.KeepAlive(None, 7, 6.0).start()  # type: ignore[arg-type]
        # New: lost at the check at 8 s (8 s since the send); old: at 12 s (5.8 + 6).
        await asyncio.wait_for(ka.lost.wait(), 10.0)
        assert ka.error is None  # lost by its age, not told gone
        await ka.stop()

    asyncio.run(main())
