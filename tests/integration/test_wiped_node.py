"""A follower that lost its disk and is restarted with its original flags, on both cores.

An operator wipes a follower's data directory (a lost volume, a rescheduled container
without its volume) and starts it again as before: it bootstraps empty from --peers. The
leader still believed the follower held everything it had acknowledged, so on Raft it
never sent it anything below that (its probes stopped at match + 1) and the follower
stayed empty for good while the cluster silently ran on two copies. It must catch up.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .harness import LocalCluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEYS = 30


def test_a_wiped_follower_catches_up(cluster: LocalCluster, tmp_path: Path) -> None:
    leader = cluster.wait_leader()
    with cluster.client() as c:
        for i in range(KEYS):
            c.put(f"k{i}", f"v{i}")
    victim = next(i for i in (3, 2, 1) if i != leader)
    cluster.kill(victim)
    shutil.rmtree(tmp_path / f"node{victim}")
    cluster.start(victim)

    def applied(node: int) -> int:
        groups = cluster.node_status(node).get("groups", [])
        return int(groups[0]["applied"]) if groups else 0

    target = applied(leader)
    wait_for(lambda: applied(victim) >= target, 20, f"wiped node {victim} to catch up")
    with cluster.client(only=[victim], timeout=5) as one:
        got = [one.get(f"k{i}", read_mode="eventual") for i in range(KEYS)]
    assert got == [f"v{i}".encode() for i in range(KEYS)]
