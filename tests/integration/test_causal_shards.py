"""Causal sessions across shards with the hybrid-clock token (docs/sharding.md), real
processes, both cores: 3 nodes, 2 shards, a split in the middle of the session.

- A session writes on one shard, then reads causally on another, idle shard from each
  replica: the idle group's applied time is below the token, so the replica must get
  its leader to stamp an entry (TIME_REQUEST / an empty stamped batch); without it the
  read waits out its deadline.
- Read-your-writes and monotonic reads on every replica, before and after a split, for
  keys of both halves; the token stays one number however many shards it touched.
- Writes-follow-reads across shards: a second session that read the first one's write
  and then wrote on another shard hands its token to a third, which sees both.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from kvstore.client import Client

from .harness import LocalCluster, wait_for


@pytest.fixture
def two_shards(tmp_path: Path, consensus: str) -> Any:
    c = LocalCluster(
        tmp_path, nodes=3, consensus=consensus, extra=["--shards", "2", "--split-keys", "m"]
    )
    try:
        c.start()
        wait_for(lambda: c.group_leaders().keys() >= {0, 1, 2}, 40, "a leader per shard")
        yield c
    finally:
        c.close()


def test_causal_session_across_shards_and_a_split(two_shards: LocalCluster) -> None:
    c = two_shards
    eps = c.endpoints
    with c.client(timeout=10) as setup:
        setup.put("z-idle", "old")  # shard 2 ([m, ...)) then stays idle
        for i in range(20):
            setup.put(f"b{i:02d}", "v0")  # shard 1 gets data to split
    # One session per replica: each serves its causal reads from its own node.
    sessions = [Client(eps, timeout=10, replica=i) for i in range(3)]
    try:
        for s in sessions:
            s.put("a-mine", f"from-{id(s)}")  # shard 1
            token = s.causal_token
            t0 = time.monotonic()
            # Shard 2 applied nothing since: its time is below the token.
            assert s.get("z-idle", read_mode="causal") == b"old"
            waited = time.monotonic() - t0
            assert waited < 2.0, f"an idle shard made a causal read wait {waited:.2f}s"
            assert s.causal_token >= token
            assert s.get("a-mine", read_mode="causal") == f"from-{id(s)}".encode()

        # Split shard 1 in the middle of the session.
        with c.client(timeout=20) as admin:
            halves = admin.split_shard(1, "b10")
        new_id = halves["right"]["id"]
        for n, s in enumerate(sessions):
            before = s.causal_token
            s.put("b05", f"left-{n}")
            s.put("b15", f"right-{n}")  # the new shard
            assert s.causal_token > before, "a later write has a later time"
            assert s.get("b05", read_mode="causal") == f"left-{n}".encode()
            assert s.get("b15", read_mode="causal") == f"right-{n}".encode()
            assert s.get("z-idle", read_mode="causal") == b"old"
        wait_for(lambda: new_id in c.group_leaders(), 20, "the new shard's leader")

        # Writes-follow-reads across shards: 1 writes on the new shard; 2 reads it and
        # writes on shard 2; 3 starts from 2's token and must see both.
        one, two, three = sessions
        one.put("b17", "cause")
        two.causal_token = max(two.causal_token, one.causal_token)
        assert two.get("b17", read_mode="causal") == b"cause"
        two.put("z-effect", "effect")
        three.causal_token = max(three.causal_token, two.causal_token)
        assert three.get("z-effect", read_mode="causal") == b"effect"
        assert three.get("b17", read_mode="causal") == b"cause"
        # Read-your-writes and monotonic reads: b15 was written right-0, -1, -2 in order.
        for n, s in enumerate(sessions):
            first = s.get("b15", read_mode="causal")
            again = s.get("b15", read_mode="causal")
            assert first is not None and again is not None
            assert int(first[-1:]) >= n, "read-your-writes"
            assert int(again[-1:]) >= int(first[-1:]), "monotonic reads"
            assert 0 < s.causal_token < 1 << 64, "one 64-bit token for every shard"
    finally:
        for s in sessions:
            s.close()
