"""Leases on a sharded cluster (docs/leases.md): a lease lives in every shard, keys of
several shards attached to it go when it expires or is revoked, each shard's leader
expiring its own; a split copies the lease to the new shard with its keys."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import LocalCluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(params=["raft", pytest.param("paxos", marks=pytest.mark.soak)])
def sharded(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path, consensus=request.param, extra=["--shards", "2"])
    try:
        c.start()
        with c.client(timeout=30) as cl:
            wait_for(
                lambda: len(cl.shards()) == 2 and cl.put("probe/a", "1") and cl.put("zz", "1"),
                120,
                "both shards to take writes",
            )
        yield c
    finally:
        c.close()


def test_a_lease_spans_shards(sharded: LocalCluster) -> None:
    with sharded.client(timeout=15) as c:
        shards = c.shards()
        assert len(shards) == 2
        split = sorted(s["start"] for s in shards)[1]
        keys = ["a/1", "b/2", "y/3", "z/4"]
        assert min(keys) < split <= max(keys)  # keys on both shards
        kept = c.grant(2)
        gone = c.grant(2)
        revoked = c.grant(30)
        background = c.keep_alive_background(kept, 2)
        for k in keys:
            c.put("kept/" + k, "1", lease=kept)
            c.put(k, "1", lease=gone)
        c.put("r/a", "1", lease=revoked)
        c.put("zr", "1", lease=revoked)
        info = c.time_to_live(revoked, keys=True)
        assert info is not None and info.keys == [b"r/a", b"zr"]
        assert c.revoke(revoked) and c.get("r/a") is None and c.get("zr") is None
        granted = time.monotonic()
        wait_for(lambda: all(c.get(k) is None for k in keys), 30, "every shard to expire it")
        assert time.monotonic() - granted > 1.0
        assert all(c.get("kept/" + k) == b"1" for k in keys)
        assert c.time_to_live(gone) is None and c.time_to_live(kept) is not None
        background.stop()
        wait_for(lambda: all(c.get("kept/" + k) is None for k in keys), 30, "kept to go")
