"""Bad shard requests with real processes: each is refused (exit 3) with a message naming
why, and the shard map is unchanged afterwards (issue 12, "Bad input").

A split at a key outside the shard; a split, merge, move or leadership transfer of a
shard that does not exist; a move to an unknown or a down node; a leadership transfer to
a down voter (it would stall the shard until the transfer timed out); a decommission that
would leave shards short of live replicas. (A decommission that would leave a shard
without a quorum needs six nodes with two of one shard's voters down:
tests/shard/test_placement.py checks that rule.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .harness import LocalCluster, wait_for


def _cli(c: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli", *args, "--endpoints", ",".join(c.endpoints)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _map(c: LocalCluster) -> list[tuple[Any, ...]]:
    out = _cli(c, "shard", "list", "--json")
    assert out.returncode == 0, out.stderr
    return [
        (r["id"], r["start"], r["end"], r["version"], r["conf_ver"], r["voters"], r["learners"])
        for r in json.loads(out.stdout)
    ]


def test_bad_shard_requests_are_refused_with_the_reason_and_change_nothing(
    tmp_path: Path,
) -> None:
    # 4 nodes, 2 shards: shard 1 [, n) on nodes 1-3, shard 2 [n, ) on nodes 2-4.
    c = LocalCluster(tmp_path, nodes=4, extra=["--shards", "2"])
    try:
        c.start()
        wait_for(lambda: c.group_leaders().keys() >= {0, 1, 2}, 40, "a leader per group")
        with c.client(timeout=15) as kv:
            for k in ("a", "c", "p", "x"):
                kv.put(k, k)
        before = _map(c)
        assert [r[0] for r in before] == [1, 2]

        def refused(args: tuple[str, ...], why: str) -> None:
            out = _cli(c, *args)
            assert out.returncode == 3 and why in out.stderr, (args, out.stdout, out.stderr)

        refused(("shard", "split", "1", "--at", "x"), "not strictly inside shard 1's range")
        refused(("shard", "split", "2", "--at", "n"), "not strictly inside shard 2's range")
        refused(("shard", "move", "1", "--from", "1", "--to", "9"), "node 9 is not a node")
        # An unknown shard id: every shard command names it (was "no node hosts shard 7",
        # "no leader of shard 7 found", "shard 7 is unknown or has no leader now").
        for args in (
            ("split", "7"),
            ("merge", "7"),
            ("move", "7", "--from", "1", "--to", "4"),
            ("transfer-leader", "7", "--to", "2"),
        ):
            refused(("shard", *args), "shard 7 does not exist (shards: [1, 2])")

        c.kill(4)

        def judged_down() -> bool:
            out = _cli(c, "node", "list", "--json")
            rows = {r["id"]: r for r in json.loads(out.stdout)} if out.returncode == 0 else {}
            return 4 in rows and rows[4]["liveness"] != "alive"

        # Until the failure detector has judged node 4, a move to it is a real move (it
        # would add a learner there): the refusal, changing nothing, comes after.
        wait_for(judged_down, 60, "node 4 judged not alive")
        wait_for(
            lambda: (
                "node 4 is not alive"
                in _cli(c, "shard", "move", "1", "--from", "1", "--to", "4", "--wait", "20").stderr
            ),
            60,
            "the move to the killed node refused as not alive",
        )
        wait_for(
            lambda: (
                "node 4 is not alive"
                in _cli(c, "shard", "transfer-leader", "2", "--to", "4").stderr
            ),
            30,
            "the transfer to the killed voter refused as not alive",
        )
        refused(("node", "decommission", "1"), "only 2 live nodes would remain")
        assert _map(c) == before
        with c.client(timeout=15) as kv:
            assert [k for k, _ in kv.scan()] == [b"a", b"c", b"p", b"x"]
    finally:
        c.close()
