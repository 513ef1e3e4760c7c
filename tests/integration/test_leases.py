"""Leases on a real 3-node cluster, Raft and Multi-Paxos: keys vanish after the TTL
without keep-alives and stay with them, a revoke deletes at once, a leader kill neither
expires a kept-alive lease early nor keeps an abandoned one for ever."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.cli import main
from kvstore.client import Client, NotFound
from kvstore.client.election import Leader
from kvstore.client.lock import LockTimeout, acquire, lock_key, unique_value

from .harness import LocalCluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TTL = 2.0


@pytest.fixture
def cluster(tmp_path: Path, consensus: str) -> Iterator[LocalCluster]:
    """conftest's cluster, with a start-up wait for a loaded machine (25 s seen at load 40)."""
    c = LocalCluster(tmp_path, consensus=consensus)
    try:
        c.start()
        c.wait_leader(90)
        yield c
    finally:
        c.close()


def test_leases_expire_survive_keep_alive_and_failover(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    with cluster.client(timeout=10) as c:
        cli_lease(cluster, c, capsys)
        lock_and_election(cluster, c)
        granted_at = time.monotonic()
        lapsed = c.grant(TTL)
        kept = c.grant(TTL)
        revoked = c.grant(30)
        assert len({lapsed, kept, revoked}) == 3
        background = c.keep_alive_background(kept, TTL)
        c.put("lapsed", "1", lease=lapsed)
        c.put("kept", "1", lease=kept)
        c.put("revoked/a", "1", lease=revoked)
        c.put("revoked/b", "1", lease=revoked)
        c.put("plain", "1")
        info = c.time_to_live(revoked, keys=True)
        assert info is not None and info.keys == [b"revoked/a", b"revoked/b"]
        assert 25 < info.remaining <= 30 and info.ttl == 30
        assert {i.id for i in c.leases()} == {lapsed, kept, revoked}

        assert c.revoke(revoked) is True
        assert c.get("revoked/a") is None and c.get("revoked/b") is None  # at once
        assert c.revoke(revoked) is False

        wait_for(lambda: c.get("lapsed") is None, 20, "the lapsed lease's key to go")
        assert time.monotonic() - granted_at >= TTL  # never before its TTL
        assert c.time_to_live(lapsed) is None
        with pytest.raises(NotFound):
            c.put("late", "1", lease=lapsed)
        assert c.get("late") is None
        assert c.get("kept") == b"1" and c.get("plain") == b"1"

        # The owner of `abandoned` dies (no keep-alive) just as the leader is killed.
        abandoned = c.grant(TTL)
        c.put("abandoned", "1", lease=abandoned)
        old = cluster.wait_leader()
        cluster.kill(old)
        new = wait_for(lambda: (x := cluster.leader()) != old and x, 60, "a new leader")
        assert new != old
        wait_for(lambda: c.get("abandoned") is None, 60, "the abandoned lease to expire")
        # The kept-alive lease outlived the failover and several TTLs after it.
        settle = time.monotonic() + 2 * TTL
        while time.monotonic() < settle:
            assert c.get("kept") == b"1", "a kept-alive lease expired"
            time.sleep(0.2)
        assert not background.lost
        background.stop()
        cluster.start(old)
        wait_for(lambda: c.get("kept") is None, 30, "the kept lease to expire once let go")
        assert c.get("plain") == b"1"


def cli_lease(cluster: LocalCluster, c: Client, capsys: pytest.CaptureFixture[str]) -> None:
    """`kvstore lease ...` and `kvstore put --lease` (in process: a CLI start costs seconds)."""
    ep = ["--endpoints", ",".join(cluster.endpoints), "--timeout", "30"]
    assert main(["lease", "grant", "30", *ep]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lease ") and out.rstrip().endswith("granted with TTL 30s")
    lease = out.split()[1]
    assert main(["put", "cli/key", "v", "--lease", lease, *ep]) == 0
    assert main(["lease", "list", *ep]) == 0
    assert f"\n{lease}\tttl=30s\tremaining=" in capsys.readouterr().out
    assert main(["lease", "keep-alive", lease, "--once", *ep]) == 0
    assert main(["lease", "time-to-live", lease, "--keys", *ep]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "cli/key"
    assert main(["lease", "revoke", lease, *ep]) == 0
    assert c.get("cli/key") is None
    assert main(["lease", "revoke", lease, *ep]) == 1
    assert main(["lease", "keep-alive", lease, "--once", *ep]) == 1
    assert main(["put", "cli/key", "v", "--lease", lease, *ep]) == 3
    with pytest.raises(SystemExit) as e:
        main(["lease", "grant", "0.5", *ep])
    assert e.value.code == 2
    assert "TTL must be 1 to" in capsys.readouterr().err


def lock_and_election(cluster: LocalCluster, c: Client) -> None:
    """The lock excludes a second holder while held, hands over on release and after its
    holder's lease lapses, with a larger fencing token each time; the election likewise."""
    with cluster.client(timeout=10) as other:
        with c.lock("job", ttl=TTL) as first:
            with pytest.raises(LockTimeout), other.lock("job", ttl=TTL, timeout=0.5):
                pass
            assert not first.lost
        with other.lock("job", ttl=TTL, timeout=10) as second:
            assert second.token > first.token
        # A holder that dies (stops renewing) loses the lock once its TTL has passed.
        held = c._run(acquire(c._async, lock_key("job"), unique_value(), TTL, None))
        c._run(held.keep_alive.stop())
        with other.lock("job", ttl=TTL, timeout=20) as third:
            assert third.token > held.token

        e1, e2 = c.election("svc", ttl=TTL), other.election("svc", ttl=TTL)
        assert e2.leader() is None
        t1 = e1.campaign("node-a")
        assert e1.leading and e2.leader() == Leader(b"node-a", t1)
        with pytest.raises(LockTimeout):
            e2.campaign("node-b", timeout=0.3)
        # observe follows a watch: with a poll period far longer than these steps it
        # still reports each change as it happens (it used to poll).
        seen = e2.observe(poll=120)
        assert next(seen) == Leader(b"node-a", t1)
        start = time.monotonic()
        e1.resign()
        assert next(seen) is None
        t2 = e2.campaign("node-b", timeout=10)
        assert t2 > t1 and next(seen) == Leader(b"node-b", t2)
        assert time.monotonic() - start < 60, "observe waited for its poll period"
        seen.close()
        e2.resign()
