"""Merges and the parts that change shards on their own, with three in-process nodes
(real gRPC on loopback, real LMDB), two shards on the same nodes: a merge whose result
the automatic split would split again at once is refused (nothing changed); while a
merge is under way both shards say so in their Status (on every node), placement plans
no step for either, and the automatic split leaves both alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvstore._pb import admin_pb2
from kvstore.client import AsyncClient, InvalidArgument
from kvstore.node.placement_loop import groups_from

from .inprocess import start_nodes, stop_nodes
from .test_merge_resume import _prepare

pytestmark = pytest.mark.timeout(120)


def test_merges_refuse_to_thrash_with_splits_and_placement_waits_for_them(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        peers, nodes = await start_nodes(
            tmp_path, tick_ms=50, shards=2, split_keys=(b"m",), split_key_count=4
        )
        try:
            async with AsyncClient(list(peers.values()), timeout=20) as c:
                for k in ("a", "b", "c", "n", "o", "p"):  # 3 keys a shard, 6 together
                    await c.put(k, k)
                with pytest.raises(InvalidArgument, match="split the merged shard again"):
                    await c.merge_shard(1)
                assert [s["id"] for s in await c.shards()] == [1, 2]

            for n in nodes:  # no watchdog finishing the merge below meanwhile
                assert n.merger is not None
                await n.merger.stop()
            await _prepare(nodes)  # shard 2 frozen into 1, its coordinator gone

            async def read_statuses() -> dict[int, admin_pb2.StatusResponse]:
                return {
                    n.driver.config.node_id: await n.meta.admin_stub(
                        peers[n.driver.config.node_id]
                    ).Status(admin_pb2.StatusRequest(), timeout=5)
                    for n in nodes
                    if n.meta is not None
                }

            def merging(st: admin_pb2.StatusResponse) -> dict[int, int]:
                return {g.group: g.merging_with for g in st.groups}

            # The source's leader applied the PrepareMerge; a loaded follower may not yet.
            for _ in range(200):
                statuses = await read_statuses()
                if all(
                    merging(st).get(1) == 2 and merging(st).get(2) == 1 for st in statuses.values()
                ):
                    break
                await asyncio.sleep(0.1)
            for st in statuses.values():
                got = merging(st)
                assert got[1] == 2 and got[2] == 1, got
            infos = {g.id: g for g in groups_from(statuses, 3)}
            assert infos[1].merging and infos[2].merging
            # Both shards are over the automatic split's threshold now: neither splits.
            for n in nodes:
                assert n.autosplit is not None
                n.autosplit.max_keys = 2
                assert await n.autosplit.round() is None
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())
