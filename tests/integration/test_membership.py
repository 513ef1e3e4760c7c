"""Membership through the admin service and the CLI: a node started with --join is added
as a learner, catches up, is promoted to voter; another voter is removed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .harness import LocalCluster, free_ports, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def member(*args: str, endpoints: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli", "member", *args, "--endpoints", endpoints],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_add_learner_promote_and_remove(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, nodes=3)
    try:
        c.start()
        c.wait_leader()
        with c.client() as kv:
            for i in range(50):
                kv.put(f"m{i}", str(i))
        c.ports[4] = free_ports(1)[0]  # node 4 knows everyone; they learn of it when added
        joiner = [*c.argv(4), "--join"]
        logf = open(tmp_path / "node4.log", "ab")  # noqa: SIM115 - the child owns it
        c.procs[4] = subprocess.Popen(joiner, stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        eps = ",".join(c.endpoint(i) for i in (1, 2, 3))
        r = member("add-learner", "4", c.endpoint(4), endpoints=eps)
        assert r.returncode == 0, r.stderr
        assert "learners=4" in r.stdout

        def caught_up() -> bool:
            with c.client(only=[4], timeout=2) as one:
                return one.get("m49", read_mode="eventual") == b"49"

        wait_for(caught_up, 30, "the learner to catch up")
        r = member("promote", "9", endpoints=eps)
        assert r.returncode != 0 and "not a learner" in r.stderr, (r.stdout, r.stderr)
        r = member("promote", "4", endpoints=eps)
        assert r.returncode == 0, r.stderr
        assert "voters=1,2,3,4" in r.stdout
        leader = c.wait_leader()
        gone = next(i for i in (1, 2, 3) if i != leader)
        r = member("remove", str(gone), endpoints=eps)
        assert r.returncode == 0, r.stderr
        expected = ",".join(str(i) for i in sorted({1, 2, 3, 4} - {gone}))
        assert f"voters={expected}" in r.stdout
        r = member("list", endpoints=eps)
        assert r.returncode == 0 and f"voters={expected} learners=" in r.stdout
        c.kill(gone)
        with c.client() as kv:
            kv.put("after", "membership")  # a quorum of the new configuration
            assert kv.get("after") == b"membership"
    finally:
        c.close()
