"""A real 3-node cluster on loopback: election, reads and writes, failover, restart and
catch-up (also through a snapshot), crash of every node under load."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import grpc
import pytest

from kvstore._pb import kv_pb2, kv_pb2_grpc
from kvstore.client import AsyncClient, InvalidArgument

from .harness import LocalCluster, running_cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_elects_one_leader_and_serves_reads_and_writes(cluster: LocalCluster) -> None:
    nodes = wait_for(
        lambda: (st := cluster.status(timeout=5)) and all(n["reachable"] for n in st) and st,
        30,
        "every node to answer status",
    )
    leaders = [n["id"] for n in nodes for g in n["groups"] if g["role"] == "leader"]
    assert len(leaders) == 1
    with cluster.client() as c:
        rev1 = c.put("alpha", "1")
        rev2 = c.put(b"beta", b"2")
        assert rev2 > rev1 > 0
        assert c.get("alpha") == b"1"
        assert c.get("missing") is None
        assert c.cas("alpha", "1", "one") is True
        assert c.cas("alpha", "1", "uno") is False
        assert c.cas("gamma", None, "3") is True
        assert c.cas("gamma", None, "again") is False
        assert c.get("alpha") == b"one"
        assert c.scan("a", "c") == [(b"alpha", b"one"), (b"beta", b"2")]
        assert c.scan(limit=1) == [(b"alpha", b"one")]
        assert c.delete("beta") is True
        assert c.delete("beta") is False
        assert c.get("beta") is None
        # Causal: a replica answers once it applied what this client wrote.
        for i in range(1, 4):
            with cluster.client(only=[i]) as one:
                one._async.causal_token = c.causal_token
                assert one.get("alpha", read_mode="causal") == b"one"
    # Eventual reads from every replica converge on the written value.
    for i in range(1, 4):
        with cluster.client(only=[i]) as one:
            wait_for(lambda one=one: one.get("gamma", read_mode="eventual") == b"3", 10, "replica")


def test_limits_are_invalid_argument_naming_the_limit(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        with pytest.raises(InvalidArgument, match="max_key_bytes=8192") as e:
            c.put(b"k" * 8193, b"v")
        assert e.value.definite
        # Keys of a few KiB (past LMDB's 511 bytes) read, scan and delete in order.
        long = [b"/registry/" + b"x" * 600 + s for s in (b"b", b"a" * 7000, b"c")]
        for i, k in enumerate(long):
            c.put(k, str(i))
        c.put(b"/registry/" + b"x" * 600, "short")
        assert c.get(long[1]) == b"1"
        assert [k for k, _ in c.scan(b"/registry/", b"/registry0")] == sorted(
            [*long, b"/registry/" + b"x" * 600]
        )
        assert c.delete(long[2]) is True
        assert c.get(long[2]) is None
        with pytest.raises(InvalidArgument, match="max_value_bytes"):
            c.put(b"k", b"v" * ((1 << 20) + 1))
        with pytest.raises(InvalidArgument, match="empty"):
            c.get(b"")
        c.put("still", "fine")
        assert c.get("still") == b"fine"
    # The node keeps its own check for clients that do not check.
    leader = cluster.wait_leader()
    with grpc.insecure_channel(cluster.endpoint(leader)) as ch, pytest.raises(grpc.RpcError) as err:
        kv_pb2_grpc.KVStub(ch).Put(kv_pb2.PutRequest(key=b"k" * 8193, value=b"v"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_key_bytes=8192" in (err.value.details() or "")


def test_leader_kill_failover_and_restart_catch_up(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        for i in range(20):
            c.put(f"before{i}", str(i))
    old = cluster.wait_leader()
    cluster.kill(old)
    t0 = time.monotonic()
    with cluster.client(timeout=30) as c:
        c.put("after", "kill")
        failover = time.monotonic() - t0
        print(f"\nfailover: leader kill -9 to first successful write: {failover:.2f}s")
        # 50 ms ticks, election timeout 10-20 ticks: a few election timeouts at most.
        assert failover < 8.0
        new = cluster.wait_leader()
        assert new != old
        for i in range(20):
            assert c.get(f"before{i}") == str(i).encode()
        for i in range(30):
            c.put(f"while-down{i}", str(i))
        leader_commit = cluster.node_status(new)["groups"][0]["commit"]
    cluster.start(old)

    def caught_up() -> bool:
        g = cluster.node_status(old)["groups"][0]
        return bool(g["applied"] >= leader_commit)

    wait_for(caught_up, 20, f"node {old} to catch up to {leader_commit}")
    with cluster.client(only=[old]) as one:
        assert one.get("while-down29", read_mode="eventual") == b"29"


def test_restarted_node_catches_up_through_a_snapshot(tmp_path: Path, consensus: str) -> None:
    with running_cluster(
        tmp_path, consensus=consensus, extra=["--snapshot-entries", "40"]
    ) as cluster:
        leader = cluster.wait_leader()
        lagger = next(i for i in (1, 2, 3) if i != leader)
        cluster.kill(lagger)
        with cluster.client() as c:
            for i in range(200):  # sequential: one entry each
                c.put(f"s{i:03d}", str(i))
        st = cluster.node_status(leader)["groups"][0]
        assert st["first_index"] > 2, f"leader log was not compacted: {st}"
        cluster.start(lagger)

        def caught_up() -> bool:
            with cluster.client(only=[lagger], timeout=2) as one:
                return one.get("s199", read_mode="eventual") == b"199"

        wait_for(caught_up, 30, f"node {lagger} to catch up via snapshot")
        # Its log now starts past what it had: it installed a snapshot.
        assert cluster.node_status(lagger)["groups"][0]["first_index"] > 2
        with cluster.client(only=[lagger]) as one:
            assert one.get("s000", read_mode="eventual") == b"0"
            assert len(one.scan("s", "t", read_mode="eventual")) == 200


def test_kill_all_nodes_under_load_keeps_every_acknowledged_write(
    tmp_path: Path, consensus: str
) -> None:
    acked: list[tuple[bytes, bytes]] = []
    lock = threading.Lock()
    with running_cluster(tmp_path, consensus=consensus) as cluster:
        cluster.wait_leader()
        stop = threading.Event()

        async def writer(w: int) -> None:
            async with AsyncClient(cluster.endpoints, timeout=3) as c:
                i = 0
                while not stop.is_set():
                    k, v = f"w{w}-{i}".encode(), f"{i}".encode()
                    try:
                        await c.put(k, v)
                    except Exception:
                        await asyncio.sleep(0.05)
                        continue
                    with lock:
                        acked.append((k, v))
                    i += 1

        async def load() -> None:
            await asyncio.gather(*(writer(w) for w in range(8)))

        t = threading.Thread(target=lambda: asyncio.run(load()))
        t.start()
        wait_for(lambda: len(acked) > 200, 30, "200 acknowledged writes")
        for i in (1, 2, 3):
            cluster.kill(i)
        stop.set()
        t.join(timeout=30)
        with lock:
            snapshot = list(acked)
        cluster.start()
        cluster.wait_leader()
        with cluster.client(timeout=20) as c:
            found = dict(c.scan("w", "x"))
        missing = [k for k, v in snapshot if found.get(k) != v]
        print(
            f"\n{len(snapshot)} acknowledged writes before kill -9 of all nodes;"
            f" missing {len(missing)}"
        )
        assert not missing, f"lost acknowledged writes: {missing[:10]}"


def test_paused_leader_does_not_hold_clients(tmp_path: Path) -> None:
    import signal

    with running_cluster(tmp_path) as cluster:
        leader = cluster.wait_leader()
        with cluster.client(timeout=15) as c:
            c.put("before", "pause")  # the client now knows the leader
            cluster.procs[leader].send_signal(signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                c.put("during", "pause")
                took = time.monotonic() - t0
            finally:
                cluster.procs[leader].send_signal(signal.SIGCONT)
            print(f"\nwrite with the old leader paused took {took:.2f}s")
            assert took < 10.0
            assert c.get("during") == b"pause"
