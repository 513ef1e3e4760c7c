"""Three nodes in one event loop (real gRPC on loopback, real LMDB): the driver batches
concurrent writes into few log entries, answers each op, and serves all read modes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvstore.client import AsyncClient
from kvstore.node.errors import NotLeaderOp
from kvstore.statemachine import Put

from .inprocess import leader as leader_of
from .inprocess import start_nodes, stop_nodes

pytestmark = pytest.mark.timeout(60)


def test_concurrent_writes_are_batched_and_all_answered(tmp_path: Path) -> None:
    async def main() -> None:
        peers, nodes = await start_nodes(tmp_path, tick_ms=50)
        try:
            leader = await leader_of(nodes)
            async with AsyncClient(list(peers.values()), timeout=10) as c:
                revs = await asyncio.gather(*(c.put(f"k{i}", f"v{i}") for i in range(200)))
                assert len(set(revs)) < 200, "200 concurrent puts should share log entries"
                hist = leader.metrics.batch_ops.collect()[0].samples
                count = next(s.value for s in hist if s.name.endswith("_count"))
                total = next(s.value for s in hist if s.name.endswith("_sum"))
                assert total >= 200 and count < 200
                gets = await asyncio.gather(*(c.get(f"k{i}") for i in range(200)))
                assert gets == [f"v{i}".encode() for i in range(200)]
                assert await c.get("k7", read_mode="eventual") in (b"v7", None)
                assert await c.get("k7", read_mode="causal") == b"v7"
                assert c.causal_token >= max(revs)
            follower = next(n for n in nodes if n.driver.groups[1].role.name != "LEADER")
            hint = follower.driver.groups[1].leader
            with pytest.raises(NotLeaderOp) as e:
                await follower.driver.propose(1, Put(b"x", b"y"), 1.0)
            assert e.value.definite
            assert e.value.leader_id == hint
            assert e.value.leader_endpoint == peers.get(hint, "")
            # A strong read on a follower goes through the leader's ReadIndex.
            if hint:
                index = await follower.driver.read_barrier(1, "strong", 0, 5.0)
                assert index >= max(revs)
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())
