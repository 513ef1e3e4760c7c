"""`kvstore member replace OLD NEW ADDR` with real processes: on Raft the new node joins as
a learner, catches up, and one joint configuration change makes it a voter and removes the
old one; the cluster then keeps its quorum without the old node. `member demote ID` makes
a voter a learner. Multi-Paxos refuses both by name and changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import LocalCluster, wait_for
from .test_membership import member, start_joiner

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_replace_a_voter_in_one_joint_step(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, nodes=3, consensus="raft")
    try:
        c.start()
        leader = c.wait_leader()
        with c.client() as kv:
            for i in range(30):
                kv.put(f"r{i}", str(i))
        start_joiner(c, tmp_path)
        eps = ",".join(c.endpoint(i) for i in (1, 2, 3))
        old = next(i for i in (1, 2, 3) if i != leader)
        r = member("replace", str(old), "4", c.endpoint(4), endpoints=eps)
        assert r.returncode == 0, r.stderr
        voters = ",".join(str(i) for i in sorted({1, 2, 3, 4} - {old}))
        assert f"voters={voters}" in r.stdout

        def left_joint() -> bool:
            st = c.node_status(c.wait_leader())
            g = st["groups"][0]
            return g["voters"] == sorted({1, 2, 3, 4} - {old}) and old not in {
                p["id"] for p in g["progress"]
            }

        wait_for(left_joint, 20, "the joint configuration to be left")
        c.kill(old)
        with c.client(only=[i for i in (1, 2, 3, 4) if i != old]) as kv:
            kv.put("after", "replace")  # a quorum of the new configuration
            assert kv.get("after") == b"replace"
            assert kv.get("r29") == b"29"
        leader = c.wait_leader()
        demoted = next(i for i in (1, 2, 3, 4) if i not in (old, leader))
        r = member("demote", str(demoted), endpoints=eps.replace(c.endpoint(old), c.endpoint(4)))
        assert r.returncode == 0, r.stderr
        assert f"learners={demoted}" in r.stdout
        with c.client(only=[i for i in (1, 2, 3, 4) if i != old]) as kv:
            kv.put("after", "demote")  # the two remaining voters commit it
            with c.client(only=[demoted], timeout=2) as one:
                wait_for(lambda: one.get("after", read_mode="eventual") == b"demote", 10, "learner")
    finally:
        c.close()


def test_paxos_refuses_replace_and_changes_nothing(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, nodes=3, consensus="paxos")
    try:
        c.start()
        c.wait_leader()
        eps = ",".join(c.endpoint(i) for i in (1, 2, 3))
        r = member("replace", "3", "4", "127.0.0.1:1", endpoints=eps)
        assert r.returncode == 3, (r.stdout, r.stderr)
        assert "only --consensus raft" in r.stderr
        r = member("demote", "3", endpoints=eps)
        assert r.returncode == 3 and "needs --consensus raft" in r.stderr, (r.stdout, r.stderr)
        r = member("list", endpoints=eps)
        assert r.returncode == 0 and "voters=1,2,3 learners=" in r.stdout
    finally:
        c.close()
