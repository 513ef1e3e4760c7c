"""A watch whose caller is slower than the watched range's writes holds a bounded number
of items in the client (kvstore/client/_watch.py, MAX_QUEUED): the stream stops being
read until the caller takes some, and no event is lost or reordered. The queue was
unbounded: every event of a busy prefix piled up until the process ran out of memory.
Real node in this process, the bound cut to 8."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import kvstore.client._watch as watch_mod
from kvstore.client import AsyncClient, WatchEvent
from tests.node.inprocess import start_node

pytestmark = pytest.mark.timeout(90)


def test_a_slow_watcher_holds_a_bounded_queue_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_mod, "MAX_QUEUED", 8, raising=False)

    async def main() -> None:
        node, addr = await start_node(tmp_path)
        try:
            async with AsyncClient([addr], timeout=20) as c:
                start = await c.put("warm", "up") + 1
                n = 120
                for i in range(0, n, 20):
                    await asyncio.gather(*(c.put(f"k{j:04d}", "v") for j in range(i, i + 20)))
                async with c.watch("k", prefix=True, start_revision=start) as w:
                    first = await anext(w)
                    # Give the stream every chance to run ahead of the caller.
                    for _ in range(20):
                        await asyncio.sleep(0.05)
                        assert w._queue.qsize() <= 8
                    got = [first] + [await anext(w) for _ in range(n - 1)]
            assert all(isinstance(e, WatchEvent) for e in got)
            keys = sorted(e.key for e in got)  # type: ignore[union-attr]
            assert keys == [f"k{j:04d}".encode() for j in range(n)]
            revs = [e.revision for e in got]  # type: ignore[union-attr]
            assert revs == sorted(revs)
        finally:
            await node.stop()

    asyncio.run(main())
