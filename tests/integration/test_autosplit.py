"""Automatic split with real processes (docs/sharding.md, "Automatic split").

One shard with small thresholds: writers fill it, it splits on its own (again and again,
each half at the middle of its data) while they write, nothing acknowledged is lost, the
map stays tiled, `kvstore shard list` shows the new shards, and once the writes stop no
further split happens (no thrash). Thresholds by flag (key count) and by environment
variable (bytes).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .harness import LocalCluster, wait_for

KEYS_PER_WRITER = 100
WRITERS = 4


def _fill(c: LocalCluster, value: str) -> dict[str, str]:
    """WRITERS threads each put KEYS_PER_WRITER keys spread over the key space."""
    acked: dict[str, str] = {}
    errors: list[str] = []

    def writer(w: int) -> None:
        with c.client(timeout=20) as kv:
            for i in range(KEYS_PER_WRITER):
                key = f"{chr(0x61 + (i * 7 + w) % 26)}{i:03d}-{w}"
                try:
                    kv.put(key, f"{value}{key}")
                except Exception as e:  # recorded, checked below
                    errors.append(f"{key}: {e!r}")
                    return
                acked[key] = f"{value}{key}"

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    return acked


def _check(c: LocalCluster, acked: dict[str, str]) -> list[dict[str, Any]]:
    with c.client(timeout=20) as kv:
        for key, value in acked.items():
            assert kv.get(key) == value.encode(), key  # nothing acknowledged was lost
        assert [k for k, _ in kv.scan()] == sorted(k.encode() for k in acked)
        rows: list[dict[str, Any]] = kv.shards()
    starts = [r["start"] for r in rows]
    ends = [r["end"] for r in rows]
    assert starts[0] == "" and ends[-1] == "" and starts[1:] == ends[:-1]  # tiled
    return rows


def _settled(c: LocalCluster, limit: int, field: str, keys: int) -> list[dict[str, Any]]:
    """The shard list once every shard has a leader (sizes come from the leaders), holds
    at most ``limit`` of ``field``, and all ``keys`` are counted."""

    def small() -> list[dict[str, Any]] | None:
        with c.client(timeout=10) as kv:
            rows: list[dict[str, Any]] = kv.shards()
        ok = all(r["leader"] and r[field] <= limit for r in rows)
        return rows if ok and sum(r["keys"] for r in rows) == keys else None

    rows = wait_for(small, 90, f"every shard at most {limit} {field}")
    assert rows is not None
    return rows


def test_a_shard_splits_on_its_own_past_the_key_count(tmp_path: Path, consensus: str) -> None:
    limit = 100
    c = LocalCluster(
        tmp_path,
        consensus=consensus,
        extra=["--shards", "1", "--split-key-count", str(limit), "--split-size", "0"],
    )
    try:
        c.start()
        wait_for(
            lambda: c.group_leaders().keys() >= {0, 1}, 40, "leaders of the meta group and shard 1"
        )
        acked = _fill(c, "v-")
        rows = _settled(c, limit, "keys", len(acked))
        # 400 keys, split at the middle while over 100: 4 shards of about 100.
        assert len(rows) >= 4, rows
        _check(c, acked)
        eps = ",".join(c.endpoints)
        listed = subprocess.run(
            [sys.executable, "-m", "kvstore.cli", "shard", "list", "--endpoints", eps],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert len(listed.stdout.strip().splitlines()) == len(rows) + 1  # header + rows
        logs = "".join(c.log(i) for i in (1, 2, 3))
        assert logs.count("event=auto_split ") == len(rows) - 1  # each split made one shard
        # No thrash: with no writes, nothing splits any more.
        time.sleep(6)
        with c.client(timeout=10) as kv:
            assert len(kv.shards()) == len(rows)
    finally:
        c.close()


@pytest.mark.parametrize("consensus", ["raft"])
def test_a_shard_splits_on_its_own_past_the_size_set_by_environment(
    tmp_path: Path, consensus: str
) -> None:
    limit = 40_000
    c = LocalCluster(
        tmp_path,
        consensus=consensus,
        extra=["--shards", "1"],
        env={"KVSTORE_SPLIT_SIZE": str(limit), "KVSTORE_SPLIT_KEY_COUNT": "0"},
    )
    try:
        c.start()
        wait_for(
            lambda: c.group_leaders().keys() >= {0, 1}, 40, "leaders of the meta group and shard 1"
        )
        acked = _fill(c, "x" * 300)  # ~400 keys of ~310 bytes: ~125 kB
        rows = _settled(c, limit, "bytes", len(acked))
        assert len(rows) >= 4, rows
        _check(c, acked)
    finally:
        c.close()
