"""Membership through the admin service and the CLI, on both cores: a node started with
--join is added as a learner, catches up, is promoted to voter; another voter is removed.
And the join contract (consensus/types.py) with real processes: the joined voter knows it
is one of four, so alone it acknowledges nothing (issue 10: Multi-Paxos did)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvstore.client import DeadlineExceeded, NotLeader, Unavailable

from .harness import LocalCluster, free_ports, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def member(*args: str, endpoints: str) -> subprocess.CompletedProcess[str]:
    """`kvstore member ...`; again while no node answers as the leader (an election on
    this loaded machine can move leadership between the call's status and its change)."""
    deadline = time.monotonic() + 15
    while True:
        r = subprocess.run(
            [sys.executable, "-m", "kvstore.cli", "member", *args, "--endpoints", endpoints],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if "NotLeader" not in r.stderr or time.monotonic() > deadline:
            return r
        time.sleep(0.5)


def start_joiner(c: LocalCluster, tmp_path: Path) -> None:
    """Start node 4 with --join (no membership); node 4 knows everyone, they learn of it
    when it is added."""
    c.ports[4] = free_ports(1)[0]
    logf = open(tmp_path / "node4.log", "ab")  # noqa: SIM115 - the child owns it
    c.procs[4] = subprocess.Popen([*c.argv(4), "--join"], stdout=logf, stderr=subprocess.STDOUT)
    logf.close()


def add_learner_and_wait(c: LocalCluster, eps: str, key: str, value: bytes) -> None:
    r = member("add-learner", "4", c.endpoint(4), endpoints=eps)
    assert r.returncode == 0, r.stderr
    assert "learners=4" in r.stdout

    def caught_up() -> bool:
        with c.client(only=[4], timeout=2) as one:
            return one.get(key, read_mode="eventual") == value

    wait_for(caught_up, 30, "the learner to catch up")


def test_add_learner_promote_and_remove(tmp_path: Path, consensus: str) -> None:
    c = LocalCluster(tmp_path, nodes=3, consensus=consensus)
    try:
        c.start()
        c.wait_leader()
        with c.client() as kv:
            for i in range(50):
                kv.put(f"m{i}", str(i))
        start_joiner(c, tmp_path)
        eps = ",".join(c.endpoint(i) for i in (1, 2, 3))
        add_learner_and_wait(c, eps, "m49", b"49")
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


def test_added_member_survives_a_restart_with_the_original_flags(
    tmp_path: Path, consensus: str
) -> None:
    """Issue 11 point 7: node 1, restarted with the --peers it was started with (nodes
    1-3), must still know node 4, added and promoted since, from what it stored."""
    c = LocalCluster(tmp_path, nodes=3, consensus=consensus)
    try:
        c.start()
        c.wait_leader()
        original = {i: c.argv(i) for i in (1, 2, 3)}
        start_joiner(c, tmp_path)
        with c.client(only=[1, 2, 3]) as kv:
            kv.put("before", "4")
            kv.add_learner(4, c.endpoint(4))

            def caught_up() -> bool:
                with c.client(only=[4], timeout=2) as one:
                    return one.get("before", read_mode="eventual") == b"4"

            wait_for(caught_up, 30, "the learner to catch up")

            def promoted() -> bool:  # a retry after an unseen success is refused
                if 4 not in kv.members()["voters"]:
                    kv.promote(4)
                return bool(kv.members()["voters"] == [1, 2, 3, 4])

            wait_for(promoted, 30, "node 4 to be a voter")
        for i in (1, 2, 3):  # every founding node restarts with its original flags
            c.stop(i)
            logf = open(tmp_path / f"node{i}.log", "ab")  # noqa: SIM115 - the child owns it
            c.procs[i] = subprocess.Popen(original[i], stdout=logf, stderr=subprocess.STDOUT)
            logf.close()

        def knows_4(i: int) -> bool:
            peers = {p["id"]: p for p in c.node_status(i)["peers"]}
            return 4 in peers and bool(peers[4]["connected"])

        for i in (1, 2, 3):
            wait_for(lambda i=i: knows_4(i), 20, f"node {i} to reach node 4 again")
        with c.client() as kv:
            wait_for(lambda: kv.transfer_leader(4) == 4, 20, "node 4 to take the lead")
            c.kill(2)  # 4 voters: 1, 3 and 4 must all take part now
            wait_for(lambda: kv.put("after", "restart"), 30, "a write without node 2")
            assert kv.get("after") == b"restart"
    finally:
        c.close()


def test_a_joined_voter_alone_acknowledges_nothing(tmp_path: Path, consensus: str) -> None:
    c = LocalCluster(tmp_path, nodes=3, consensus=consensus)
    acked: dict[str, bytes] = {}
    try:
        c.start()
        c.wait_leader()
        with c.client() as kv:
            for i in range(20):
                kv.put(f"j{i}", str(i))
                acked[f"j{i}"] = str(i).encode()
        start_joiner(c, tmp_path)
        eps = ",".join(c.endpoint(i) for i in (1, 2, 3))
        add_learner_and_wait(c, eps, "j19", b"19")
        r = member("promote", "4", endpoints=eps)
        assert r.returncode == 0, r.stderr
        with c.client() as kv:
            for i in range(20, 30):
                kv.put(f"j{i}", str(i))
                acked[f"j{i}"] = str(i).encode()

        def all_see_four_voters() -> bool:
            return all(c.node_status(i)["groups"][0]["voters"] == [1, 2, 3, 4] for i in c.ports)

        wait_for(all_see_four_voters, 20, "every node to report voters 1,2,3,4")
        for i in (1, 2, 3):
            c.kill(i)
        # One of four voters is no quorum: the write must fail (not be acknowledged).
        with (
            c.client(only=[4], timeout=6) as alone,
            pytest.raises((Unavailable, DeadlineExceeded, NotLeader)),
        ):
            alone.put("alone", "lost?")
        for i in (1, 2, 3):
            c.start(i)
        c.wait_leader(timeout=30)
        with c.client(timeout=20) as kv:
            for k, v in acked.items():
                assert kv.get(k) == v, f"acknowledged write {k} lost"
            kv.put("after", "restart")
    finally:
        c.close()
