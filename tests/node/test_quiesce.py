"""Quiescence with three in-process nodes (real gRPC on loopback, real LMDB), four shards,
both cores: once idle, every group goes quiet on every node, leaders included (no
heartbeats, no ticks), stays quiet while idle, and a write wakes its shard at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from kvstore.client import AsyncClient
from kvstore.consensus.types import Role
from kvstore.server.process import Node

from .inprocess import start_nodes, stop_nodes

pytestmark = pytest.mark.timeout(120)
SHARDS = 4


def _leaders(nodes: list[Node]) -> dict[int, Node]:
    out = {}
    for n in nodes:
        for gid, g in n.driver.groups.items():
            if g.role == Role.LEADER:
                out[gid] = n
    return out


def _loud(nodes: list[Node]) -> list[tuple[int, int, str]]:
    """(node, group, role) of every group still ticking."""
    return [
        (n.driver.config.node_id, gid, g.role.name)
        for n in nodes
        for gid, g in sorted(n.driver.groups.items())
        if gid not in n.driver.quiesce.quiet
    ]


async def _until(what: str, ok: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("consensus", ["raft", "paxos"])
def test_idle_groups_go_quiet_leaders_too_and_a_write_wakes_one(
    tmp_path: Path, consensus: str
) -> None:
    async def main() -> None:
        peers, nodes = await start_nodes(tmp_path, tick_ms=50, consensus=consensus, shards=SHARDS)
        try:
            groups = set(range(SHARDS + 1))
            await _until("a leader per group", lambda: set(_leaders(nodes)) >= groups, 60)
            async with AsyncClient(list(peers.values()), timeout=20) as c:
                for s in await c.shards():
                    await c.put(s["start"] + "\x00", "v")  # inside the shard
            # QUIET_AFTER_TICKS (2 s) after the last write, plus slack for a loaded machine.
            await _until(f"every group quiet: {_loud(nodes)}", lambda: not _loud(nodes), 40)
            # Idle: nothing wakes them (a leader that still heartbeat would keep its
            # followers' answers coming, and a follower whose leader went quiet would
            # campaign if it ticked).
            ticks = {n.driver.config.node_id: n.driver.quiesce.now for n in nodes}
            await _until(
                "ticks go on",
                lambda: all(
                    n.driver.quiesce.now > ticks[n.driver.config.node_id] + 20 for n in nodes
                ),
                30,
            )
            assert not _loud(nodes), _loud(nodes)
            leaders = _leaders(nodes)
            assert set(leaders) >= groups  # nobody stepped down
            async with AsyncClient(list(peers.values()), timeout=20) as c:
                shard = (await c.shards())[0]
                await c.put(shard["start"] + "\x00", "w")
                leader = leaders[shard["id"]]
                assert shard["id"] not in leader.driver.quiesce.quiet  # woke for the write
                assert await c.get(shard["start"] + "\x00") == b"w"
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())
