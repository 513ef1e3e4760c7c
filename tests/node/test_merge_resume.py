"""The merge coordinator's recovery paths with three in-process nodes (real gRPC on
loopback, real LMDB), two shards on the same nodes: a merge whose coordinator went away
after the PrepareMerge is finished by the node leading the frozen source (the watchdog),
and one that can no longer commit (the target changed) is fenced and rolled back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvstore.node import merge_coordinator as mc
from kvstore.server.process import Node
from kvstore.shard import commands as cmds
from kvstore.shard.descriptor import Descriptor

from .inprocess import leader as _leader
from .inprocess import start_nodes, stop_nodes

pytestmark = pytest.mark.timeout(90)


async def _cluster(tmp_path: Path, split_keys: tuple[bytes, ...] = (b"m",)) -> list[Node]:
    _, nodes = await start_nodes(
        tmp_path, tick_ms=50, shards=len(split_keys) + 1, split_keys=split_keys
    )
    return nodes


def _shard(n: Node, group: int) -> Descriptor | None:
    return n.driver.storage.group(group).view.shard


async def _prepare(nodes: list[Node]) -> tuple[Node, Descriptor]:
    """A PrepareMerge of shard 2 into shard 1, as a coordinator that then died left it."""
    src_leader = await _leader(nodes, 2)
    tgt = _shard(src_leader, 1)
    src = _shard(src_leader, 2)
    assert tgt is not None and src is not None
    data = cmds.encode(cmds.PrepareMerge(1, src.epoch, tgt.epoch))
    assert await src_leader.driver.propose_admin(2, data, 5.0) > 0
    frozen = _shard(src_leader, 2)
    assert frozen is not None and frozen.merging_into == 1
    return src_leader, frozen


async def _resume(n: Node) -> list[int]:
    merger = n.merger
    assert merger is not None
    now = asyncio.get_running_loop().time()
    assert await merger.resume_stale(now) == []  # first seen frozen now
    return await merger.resume_stale(now + mc.RESUME_AFTER_S)


def test_the_source_leader_finishes_an_orphaned_merge(tmp_path: Path) -> None:
    async def main() -> None:
        nodes = await _cluster(tmp_path)
        try:
            leader, _ = await _prepare(nodes)
            assert await _resume(leader) == [2]
            for _ in range(200):  # every replica applies the CommitMerge
                if all(2 not in n.driver.groups for n in nodes):
                    break
                await asyncio.sleep(0.05)
            for n in nodes:
                merged = _shard(n, 1)
                assert 2 not in n.driver.groups and merged is not None
                assert (merged.start, merged.end) == (b"", b"")
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_a_merge_that_can_no_longer_commit_is_fenced_and_rolled_back(tmp_path: Path) -> None:
    async def main() -> None:
        nodes = await _cluster(tmp_path)
        try:
            leader, frozen = await _prepare(nodes)
            # The target changes after the prepare (here: another coordinator's fence).
            tgt_leader = await _leader(nodes, 1)
            fence = cmds.encode(cmds.FenceMerge(2))
            assert await tgt_leader.driver.propose_admin(1, fence, 5.0) > 0
            for _ in range(200):
                t = _shard(leader, 1)
                if t is not None and t.epoch != frozen.merge_target_epoch:
                    break
                await asyncio.sleep(0.05)
            assert await _resume(leader) == [2]
            back = _shard(await _leader(nodes, 2), 2)
            assert back is not None and back.merging_into == 0
            assert back.epoch.version == frozen.epoch.version + 1
            t = _shard(leader, 1)
            assert t is not None and t.end == b"m"  # not merged
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_a_source_whose_target_merged_away_meanwhile_is_rolled_back(tmp_path: Path) -> None:
    """A merge chain: shard 3 is frozen into shard 2 (its coordinator died), then shard 1
    absorbs shard 2. Shard 2's log applies no CommitMerge once frozen and is gone: the
    watchdog must roll shard 3 back (it waited for a replica of shard 2 for ever, and
    shard 3's keys took no write again)."""

    async def main() -> None:
        nodes = await _cluster(tmp_path, split_keys=(b"g", b"t"))
        try:
            src_leader = await _leader(nodes, 3)
            tgt, src = _shard(src_leader, 2), _shard(src_leader, 3)
            assert tgt is not None and src is not None
            data = cmds.encode(cmds.PrepareMerge(2, src.epoch, tgt.epoch))
            assert await src_leader.driver.propose_admin(3, data, 5.0) > 0
            left = await _leader(nodes, 1)
            assert left.merger is not None
            merged, gone = await left.merger.merge(1, 2, 30.0)
            assert gone == 2 and merged.end == b"t"
            leader = await _leader(nodes, 3)
            for _ in range(200):  # the merge of 2 into 1 reaches shard 3's leader
                if 2 not in leader.driver.groups:
                    break
                await asyncio.sleep(0.05)
            assert await _resume(leader) == [3]
            back = _shard(await _leader(nodes, 3), 3)
            assert back is not None and back.merging_into == 0
            assert back.epoch.version == src.epoch.version + 1
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())
