"""A sharded cluster of real processes: 5 nodes, 4 shards (docs/sharding.md).

Keys route to their shards, scans cross shard boundaries in key order, a shard splits
online (by the CLI, at the middle of its data) while writers keep writing to it and
nothing acknowledged is lost, and a client holding the map from before the split keeps
working without noticing. Both consensus cores.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kvstore.client import Client

from .harness import LocalCluster, Writers, wait_for

NODES, SHARDS = 5, 4


def _cli(c: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli", *args, "--endpoints", ",".join(c.endpoints)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def sharded(tmp_path: Path, consensus: str) -> Any:
    c = LocalCluster(tmp_path, nodes=NODES, consensus=consensus, extra=["--shards", str(SHARDS)])
    try:
        c.start()
        # The meta group (0) and every data shard elect a leader.
        wait_for(lambda: c.group_leaders().keys() >= {0, 1, 2, 3, 4}, 40, "a leader per shard")
        yield c
    finally:
        c.close()


def test_sharded_cluster_routes_splits_online_and_stale_clients_recover(
    sharded: LocalCluster,
) -> None:
    c = sharded
    keys = [f"{p}{i}" for p in "bhkpqrsvx" for i in range(6)]
    with c.client(timeout=15) as kv:
        for k in keys:
            kv.put(k, f"v-{k}")
        # Every shard got some keys, on the nodes the layout placed them on.
        rows = {r["id"]: r for r in kv.shards()}
        assert sorted(rows) == [1, 2, 3, 4]
        assert all(rows[i]["keys"] > 0 for i in rows), rows
        assert [k for k, _ in kv.scan()] == sorted(k.encode() for k in keys)
        assert [k for k, _ in kv.scan("k", "r")] == sorted(
            k.encode() for k in keys if "k" <= k < "r"
        )
        assert len(kv.scan("", "", 7)) == 7
        assert kv.get("q3", read_mode="eventual") in (None, b"v-q3")
        assert kv.get("q3", read_mode="causal") == b"v-q3"

    stale = Client(c.endpoints, timeout=15)
    assert stale.get("q1") == b"v-q1"  # caches the map from before the split

    # Writers keep writing to shard 3 ([n, t)) while it splits.
    writers = Writers(c, [f"{p}w" for p in "opqrs"], timeout=15).start()
    acked = writers.acked
    out = _cli(c, "shard", "split", "3")
    assert out.returncode == 0, out.stderr
    assert "split shard 3" in out.stdout
    wait_for(lambda: all(acked.get(f"{p}w", 0) > 20 for p in "opqrs"), 30, "writes after the split")
    writers.stop()

    with c.client(timeout=15) as kv:
        for name, n in acked.items():
            assert kv.get(name) == str(n).encode(), name  # nothing acknowledged was lost
        rows = kv.shards()
        assert len(rows) == SHARDS + 1
        starts = [r["start"] for r in rows]
        ends = [r["end"] for r in rows]
        assert starts[0] == "" and ends[-1] == "" and starts[1:] == ends[:-1]  # tiled
        new = next(r for r in rows if r["id"] not in (1, 2, 3, 4))
        assert "n" < new["start"] < "t" and new["version"] == 2

    # The client from before the split: its cached route is stale; it notices nothing.
    for k in ("q1", "s5", "n0"):
        want = f"v-{k}".encode() if k != "n0" else None
        assert stale.get(k) == want
    stale.put("s5", "after")
    assert stale.get("s5") == b"after"
    assert [k for k, _ in stale.scan("p", "t")][:1] == [b"p0"]
    stale.close()

    # Bad input changes nothing: a split key outside the shard is refused with the reason.
    bad = _cli(c, "shard", "split", "1", "--at", "zzz")
    assert bad.returncode == 3 and "not strictly inside" in bad.stderr
    listed = _cli(c, "shard", "list", "--json")
    assert listed.returncode == 0 and listed.stdout.count('"id"') == SHARDS + 1


def test_a_new_replica_is_created_by_snapshot_with_its_range(
    tmp_path: Path, consensus: str
) -> None:
    """A node that hosts no replica of a shard gets one (AddReplica, then add-learner):
    the shard's log starts above index 0, so the new replica is built from a range
    snapshot carrying the descriptor; conf_ver rises and the map learns the learner."""
    from kvstore._pb import admin_pb2

    c = LocalCluster(tmp_path, nodes=4, consensus=consensus, extra=["--shards", "2"])
    try:
        c.start()
        wait_for(lambda: c.group_leaders().keys() >= {0, 1, 2}, 40, "a leader per shard")
        with c.client(timeout=15) as kv:
            for i in range(20):
                kv.put(f"a{i:02d}", str(i))  # shard 1 ([b"", b"n")), voters 1, 2, 3
            assert 4 not in next(r for r in kv.shards() if r["id"] == 1)["voters"]
            st4 = kv._run(
                kv._async._admin_call(
                    c.endpoint(4), "AddReplica", admin_pb2.AddReplicaRequest(shard=1), 5.0
                )
            )
            assert st4.created
            leader = c.group_leaders()[1]
            kv._run(
                kv._async._admin_call(
                    c.endpoint(leader),
                    "AddLearner",
                    admin_pb2.MemberRequest(group=1, node_id=4),
                    10.0,
                )
            )

            def caught_up() -> bool:
                with Client([c.endpoint(4)], timeout=3) as one:
                    st = one.status(sizes=True)[0]
                g = next((g for g in st["groups"] if g["group"] == 1), None)
                return g is not None and g["shard"] is not None and g["keys"] == 20

            wait_for(caught_up, 30, "node 4's replica of shard 1 built from a snapshot")
            row = wait_for(
                lambda: next(r for r in kv.shards() if r["id"] == 1 and r["learners"] == [4]),
                15,
                "the map to list the learner",
            )
            assert row["conf_ver"] == 2 and row["version"] == 1
            kv.put("a99", "after")
        with Client([c.endpoint(4)], timeout=10) as only4:
            assert only4.get("a05", read_mode="eventual") == b"5"
    finally:
        c.close()


def test_a_node_down_during_a_split_catches_up_by_snapshots(tmp_path: Path, consensus: str) -> None:
    """A node is down while its shard splits and both halves compact their logs past the
    split: back up, it gets the parent's snapshot (the left range) and, once that no
    longer overlaps, the new shard's snapshot, which creates its replica of it."""
    c = LocalCluster(
        tmp_path,
        nodes=3,
        consensus=consensus,
        extra=["--shards", "1", "--snapshot-entries", "20"],
    )
    try:
        c.start()
        wait_for(lambda: c.group_leaders().keys() >= {0, 1}, 40, "a leader per shard")
        c.stop(3)
        with c.client(timeout=15) as kv:
            wait_for(lambda: kv.put("a", "0"), 20, "a write with node 3 down")
            for i in range(40):
                kv.put(f"{'c' if i % 2 else 'x'}{i:02d}", str(i))
            out = _cli(c, "shard", "split", "1", "--at", "m")
            assert out.returncode == 0, out.stderr
            new_id = next(r["id"] for r in kv.shards() if r["start"] == "m")
            for i in range(40, 100):
                kv.put(f"{'d' if i % 2 else 'y'}{i:02d}", str(i))
        c.start(3)

        def node3() -> dict[int, Any]:
            with Client([c.endpoint(3)], timeout=3) as one:
                st = one.status(sizes=True)[0]
            return {g["group"]: g for g in st["groups"]}

        def caught_up() -> bool:
            gs = node3()
            left, right = gs.get(1), gs.get(new_id)
            return bool(
                left
                and right
                and left["shard"]
                and right["shard"]
                and left["shard"]["end"] == "m"
                and right["shard"]["start"] == "m"
                and left["keys"] == 51
                and right["keys"] == 50
            )

        wait_for(caught_up, 60, "node 3 holding both halves of the split")
        with Client([c.endpoint(3)], timeout=10) as only3:
            assert only3.get("y98", read_mode="eventual") == b"98"
    finally:
        c.close()


def test_quiet_shards_still_fail_over_and_wake_for_writes(tmp_path: Path, consensus: str) -> None:
    """Idle shards stop ticking (quiesce.py); a write wakes one at once, and when a
    leader's node dies the failure detector wakes its followers, which elect anew."""
    c = LocalCluster(tmp_path, nodes=5, consensus=consensus, extra=["--shards", "4"])
    try:
        c.start()
        wait_for(lambda: c.group_leaders().keys() >= {0, 1, 2, 3, 4}, 40, "a leader per shard")
        with c.client(timeout=15) as kv:
            for k in ("apple", "kiwi", "pear", "zebra"):
                kv.put(k, "1")
        time.sleep(3.0)  # idle for longer than QUIET_AFTER_TICKS
        leaders = c.group_leaders()
        victim = leaders[1]
        with c.client(timeout=15) as kv:
            assert kv.get("apple") == b"1"  # a read wakes a quiet shard
        c.kill(victim)
        with c.client(timeout=20) as kv:
            for k in ("apple", "kiwi", "pear", "zebra"):
                kv.put(k, "2")
                assert kv.get(k) == b"2"
        assert c.group_leaders().get(1) not in (None, victim)
    finally:
        c.close()
