"""One client with many more writes in flight than the session window remembers: every
write is applied exactly once and acknowledged (seqs used to be taken when a call was
made, so a write queued behind over 1,024 others carried a seq the session had passed
and was refused as "may have applied")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvstore.client import AsyncClient

from .harness import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_thousands_of_concurrent_writes_on_one_client_all_apply(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, nodes=1)
    try:
        cluster.start()
        cluster.wait_leader()

        async def main() -> None:
            async with AsyncClient(cluster.endpoints, timeout=60.0) as c:
                n = 8000
                await asyncio.gather(*(c.put(f"w{i:05d}", f"v{i}") for i in range(n)))
                rows = await c.scan("w", "x")
                assert len(rows) == n
                assert rows[123] == (b"w00123", b"v123")

        asyncio.run(main())
    finally:
        cluster.close()
