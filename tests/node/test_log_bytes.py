"""Compaction by size (node/log_bytes.py): the byte count of the log, and a follower far
behind by bytes (though few entries) catches up from a snapshot, not a replay."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvstore.client import AsyncClient
from kvstore.node.log_bytes import LogBytes
from kvstore.server.process import Node, ServeOptions
from tests.node.test_inprocess import _leader, _ports

pytestmark = pytest.mark.timeout(180)


def test_compact_point_keeps_a_quarter_as_tail() -> None:
    b = LogBytes((i, 100) for i in range(11, 31))  # entries 11..30, 100 B each
    assert b.between(10, 30) == 2000
    assert b.compact_point(30, 2001) == 0  # under the limit: keep everything
    assert b.compact_point(20, 1000) == 17  # (17, 20] keeps 300 B >= 1000 // 4
    assert b.between(17, 20) >= 250
    at = b.compact_point(30, 2000)
    assert b.between(at, 30) >= 500 and b.between(at - 1, 30) > 500
    b.compacted(at)
    assert b.compact_point(30, 2000) == 0
    assert b.between(0, 30) == b.between(at, 30)


def test_replaced_suffix_and_gaps_are_counted_again() -> None:
    b = LogBytes([(1, 10), (2, 10), (3, 10)])
    b.stored(2, 50)  # a leader's entry replaces 2 and 3
    assert b.between(0, 3) == 60
    b.stored(3, 5)
    assert b.between(0, 3) == 65
    b.stored(9, 7)  # a snapshot at 8 put the log past a gap
    assert b.between(0, 9) == 7


def test_follower_far_behind_by_bytes_gets_a_snapshot(tmp_path: Path) -> None:
    """10 entries of ~256 KiB each are far below --snapshot-entries, but over
    --snapshot-log-mb 1: the leader compacts and the restarted follower is sent a snapshot
    (before, it replayed the whole log; 1 M writes took 60 s)."""

    async def main() -> None:
        ports = _ports(3)
        peers = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(ports)}

        def node(i: int) -> Node:
            opts = ServeOptions(
                id=i,
                listen=peers[i],
                peers=peers,
                data_dir=str(tmp_path / f"n{i}"),
                tick_ms=50,
                snapshot_log_mb=1,
            )
            return Node(opts)

        nodes = {i: node(i) for i in peers}
        for n in nodes.values():
            await n.start()
        try:
            leader = await _leader(list(nodes.values()))
            lag = next(i for i, n in nodes.items() if n is not leader)
            await nodes[lag].stop()
            value = b"v" * (256 << 10)
            live = [peers[i] for i in peers if i != lag]
            async with AsyncClient(live, timeout=20) as c:
                for i in range(10):
                    await c.put(f"k{i}", value)
            g = leader.driver.groups[1]
            assert g.compacted > 0, "1 MiB of applied log is compacted"
            commit = g.core.status().commit
            nodes[lag] = node(lag)
            await nodes[lag].start()
            for _ in range(1200):
                if nodes[lag].driver.groups[1].applied >= commit:
                    break
                await asyncio.sleep(0.025)
            assert nodes[lag].driver.groups[1].applied >= commit
            sent = leader.metrics.snapshots_sent.labels("1", "ok")._value.get()
            assert sent >= 1
            got = nodes[lag].storage.kv(1).get(b"k9")
            assert got is not None and got.value == value
        finally:
            for n in nodes.values():
                await n.stop()

    asyncio.run(main())
