"""A causal token the cluster cannot have handed out (far ahead of every clock) is
refused at the edge (INVALID_ARGUMENT naming the bound) and never reaches a node's
hybrid clock: once it had, the next stamp overflowed 64 bits and the driver stopped
(every later leader too, as they observed the stamp in the log)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from kvstore.client import AsyncClient, InvalidArgument
from kvstore.node.hlc import pack

from .inprocess import start_node

pytestmark = pytest.mark.timeout(60)


def test_huge_causal_token_is_refused_and_the_node_keeps_serving(tmp_path: Path) -> None:
    async def main() -> None:
        node, addr = await start_node(tmp_path)
        try:
            async with AsyncClient([addr], timeout=10) as c:
                await c.put("a", "1")
                before = node.driver.replica.hlc.last
                for token in ((1 << 64) - 2, (1 << 64) - 1, 1 << 62):
                    async with AsyncClient([addr], timeout=5) as bad:
                        bad.causal_token = token
                        with pytest.raises(InvalidArgument, match="causal token"):
                            await bad.put("b", "2")
                        with pytest.raises(InvalidArgument, match="causal token"):
                            await bad.get("a", read_mode="causal")
                assert node.driver.replica.hlc.last < pack(int(time.time() * 1000) + 60_000)
                assert node.driver.replica.hlc.last >= before
                # The node still takes writes (it crashed here before).
                await c.put("c", "3")
                assert await c.get("c") == b"3"
        finally:
            await node.stop()

    asyncio.run(main())
