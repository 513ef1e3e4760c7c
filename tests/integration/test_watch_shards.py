"""A watch over a range that spans shards, with a split of a watched shard in the middle
(docs/watch.md): every acknowledged write is watched once, each shard's events come in
its revision order, and the split's new shard continues its parent's stream from the
revision the watcher had reached. Raft only (the per-shard streams are the same code on
both cores, which test_watch.py runs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.client import WatchEvent, WatchProgress

from .harness import LocalCluster, wait_for


@pytest.fixture
def two_shards(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path, nodes=3, extra=["--shards", "2", "--split-keys", "m"])
    try:
        c.start()
        wait_for(lambda: c.group_leaders().keys() >= {0, 1, 2}, 120, "a leader per shard")
        yield c
    finally:
        c.close()


def test_watch_across_shards_and_a_split(two_shards: LocalCluster) -> None:
    c = two_shards
    with c.client(timeout=20) as cl:
        first = {1: cl.put("a0", "x"), 2: cl.put("n0", "x")}
        w = cl.watch("a", range_end="z", start_revision=min(first.values()), progress_notify=True)
        acked: list[tuple[bytes, bytes]] = []
        for i in range(1, 6):
            for k in (f"a{i}", f"d{i}", f"n{i}"):
                cl.put(k, f"{k}-{i}")
                acked.append((k.encode(), f"{k}-{i}".encode()))
        events: list[WatchEvent] = []
        progress: list[WatchProgress] = []

        def take(n: float) -> None:
            item = w.next(timeout=n)
            if isinstance(item, WatchEvent):
                events.append(item)
            elif isinstance(item, WatchProgress):
                progress.append(item)

        wait_for(lambda: (take(0.5), len(events) >= 15)[1], 60, "the first events")
        halves = cl.split_shard(1, "c")
        new_id = halves["right"]["id"]
        for i in range(6, 11):
            for k in (f"a{i}", f"d{i}", f"n{i}"):
                cl.put(k, f"{k}-{i}")
                acked.append((k.encode(), f"{k}-{i}".encode()))
        wait_for(
            lambda: (
                (take(0.5), len([e for e in events if e.key != b"a0" and e.key != b"n0"]))[1]
                >= len(acked)
            ),
            90,
            "every write watched",
        )
        w.close()
    seen = [(e.key, e.value) for e in events if e.key not in (b"a0", b"n0")]
    assert sorted(seen) == sorted(acked), "lost or duplicated events"
    by_shard: dict[int, list[int]] = {}
    for e in events:
        by_shard.setdefault(e.shard, []).append(e.revision)
    for shard, revs in by_shard.items():
        assert revs == sorted(revs), f"shard {shard} out of revision order"
    # d6.. landed in the split's new shard and were watched there.
    assert {e.shard for e in events if e.key.startswith(b"d") and int(e.key[1:]) > 5} == {new_id}
    assert {e.shard for e in events if e.key.startswith(b"n")} == {2}
