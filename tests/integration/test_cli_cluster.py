"""CLI smoke tests against real processes: `kvstore cluster` runs until SIGINT and reuses its
data on restart; put/get/delete/cas/scan/status/transfer-leader talk to it; a node refuses a
data dir of another cluster."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kvstore.client import Client

from .harness import free_port_block, free_ports, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def kv(*args: str, endpoints: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli", *args, "--endpoints", endpoints, "--timeout", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_cluster(data: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kvstore.cli",
            "cluster",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop_cluster(p: subprocess.Popen[str]) -> str:
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=30)
    return out


def test_cluster_command_and_client_commands(tmp_path: Path) -> None:
    base = free_port_block(3)
    eps = ",".join(f"127.0.0.1:{base + i}" for i in range(3))
    p = start_cluster(tmp_path, base)
    try:

        def has_leader() -> bool:
            r = kv("status", "--json", endpoints=eps)
            return r.returncode == 0 and any(
                g["role"] == "leader"
                for n in json.loads(r.stdout)
                if n["reachable"]
                for g in n["groups"]
            )

        wait_for(has_leader, 30, "a leader", interval=0.3)
        assert kv("put", "greeting", "hello", endpoints=eps).returncode == 0
        r = kv("get", "greeting", endpoints=eps)
        assert (r.returncode, r.stdout) == (0, "hello\n")
        r = kv("get", "nothing", endpoints=eps)
        assert r.returncode == 1 and "not found" in r.stderr
        assert kv("cas", "greeting", "hello", "hi", endpoints=eps).returncode == 0
        assert kv("cas", "greeting", "hello", "hey", endpoints=eps).returncode == 1
        assert kv("cas", "fresh", "v", "--expect-absent", endpoints=eps).returncode == 0
        r = kv("scan", endpoints=eps)
        assert r.stdout.splitlines() == ["fresh\tv", "greeting\thi"]
        r = kv("delete", "fresh", endpoints=eps)
        assert (r.returncode, r.stdout.strip()) == (0, "deleted")
        r = kv("delete", "fresh", endpoints=eps)  # exit 1 when absent, as get (issue 14)
        assert r.returncode == 1 and "not found" in r.stderr
        r = kv("status", endpoints=eps)
        assert r.returncode == 0 and r.stdout.count("role=leader") == 1
        leader = next(
            n["id"]
            for n in json.loads(kv("status", "--json", endpoints=eps).stdout)
            for g in n["groups"]
            if g["role"] == "leader"
        )

        # The leader shows each member's replication progress; followers show none.
        def progress() -> dict[int, list[dict[str, object]]]:
            nodes = json.loads(kv("status", "--json", endpoints=eps).stdout)
            return {n["id"]: g["progress"] for n in nodes for g in n["groups"]}

        def caught_up() -> bool:
            p = progress()
            rows = p[leader]
            return (
                [r["id"] for r in rows] == [1, 2, 3]
                and all(r["state"] == "replicate" and r["next"] == r["match"] + 1 for r in rows)
                and len({r["match"] for r in rows}) == 1
                and all(not v for k, v in p.items() if k != leader)
            )

        wait_for(caught_up, 10, "every member replicating at the same match", interval=0.3)
        target = 1 if leader != 1 else 2
        r = kv("transfer-leader", "--to", str(target), endpoints=eps)
        assert r.returncode == 0, r.stderr
        assert f"leader is now {target}" in r.stdout
    finally:
        out = stop_cluster(p)
    assert p.returncode == 0, out
    assert "endpoints: " + eps in out and "stopped" in out

    # Restart on the same data: the value is still there.
    p = start_cluster(tmp_path, base)
    try:
        wait_for(lambda: kv("get", "greeting", endpoints=eps).stdout == "hi\n", 30, "data reused")
    finally:
        stop_cluster(p)


def test_sharded_cluster_command_with_the_shard_and_node_commands(tmp_path: Path) -> None:
    """Issue 12's done-when: `kvstore cluster --nodes 5 --shards 4` starts a sharded
    cluster, and the README's `kvstore shard list` and `kvstore node list` show it."""
    base = free_port_block(5)
    eps = ",".join(f"127.0.0.1:{base + i}" for i in range(5))
    p = start_cluster(tmp_path, base, "--nodes", "5", "--shards", "4")
    try:

        def shards_led() -> list[dict[str, object]] | None:
            r = kv("shard", "list", "--json", endpoints=eps)
            rows = json.loads(r.stdout) if r.returncode == 0 else []
            ok = len(rows) == 4 and all(row["leader"] for row in rows)
            return rows if ok else None

        rows = wait_for(shards_led, 60, "4 shards, each with a leader", interval=0.3)
        assert [(r["start"], r["end"]) for r in rows] == [
            ("", "g"),
            ("g", "n"),
            ("n", "t"),
            ("t", ""),
        ]
        assert all(len(r["voters"]) == 3 for r in rows), rows  # type: ignore[arg-type]
        keys = ["apple", "kiwi", "pear", "zebra"]  # one in each shard
        with Client(eps.split(","), timeout=10) as c:
            for k in keys:
                c.put(k, f"v-{k}")
            assert c.scan("a", "zz", 10) == [(k.encode(), f"v-{k}".encode()) for k in keys]

        def one_key_each() -> str | None:
            r = kv("shard", "list", endpoints=eps)  # the table the README shows
            lines = r.stdout.splitlines()
            counts = [line.split()[-2] for line in lines[1:]]
            return r.stdout if lines[0].startswith("ID") and counts == ["1"] * 4 else None

        wait_for(one_key_each, 20, "shard list counting one key in each shard", interval=0.5)

        r = kv("node", "list", endpoints=eps)
        lines = r.stdout.splitlines()
        assert r.returncode == 0 and lines[0].split()[:3] == ["ID", "ENDPOINT", "LIVENESS"], r
        assert [line.split()[:3] for line in lines[1:]] == [
            [str(i + 1), f"127.0.0.1:{base + i}", "alive"] for i in range(5)
        ], r.stdout
        nodes = json.loads(kv("node", "list", "--json", endpoints=eps).stdout)
        assert sum(n["leaders"] for n in nodes) >= 4  # the 4 shards' (and the meta group's)
    finally:
        out = stop_cluster(p)
    assert p.returncode == 0, out
    assert "5 nodes (raft, 4 shards)" in out and "endpoints: " + eps in out, out


def test_node_refuses_a_data_dir_of_another_cluster(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    argv = [
        sys.executable, "-m", "kvstore.cli", "serve", "--id", "1",
        "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path),
    ]  # fmt: skip
    p = subprocess.Popen([*argv, "--cluster-id", "first"], stderr=subprocess.PIPE, text=True)
    try:
        from kvstore.client import Client

        with Client([f"127.0.0.1:{port}"], timeout=2) as c:
            wait_for(lambda: c.status()[0]["reachable"], 20, "node up")
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=20)
    r = subprocess.run(
        [*argv, "--cluster-id", "second"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 3
    assert "cluster_id=first" in r.stderr and "cluster_id=second" in r.stderr
    r = subprocess.run(
        [*argv, "--cluster-id", "first", "--consensus", "paxos"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 3 and "consensus" in r.stderr


def test_single_node_and_the_unsafe_ack_switch_is_loud(tmp_path: Path) -> None:
    # Only the test-only module reaches the switch (kvstore serve has no way to set it).
    port = free_ports(1)[0]
    argv = [
        sys.executable, "-m", "kvstore.jepsen.unsafe_node", "serve", "--id", "1",
        "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path),
    ]  # fmt: skip
    p = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        r = None
        for _ in range(100):
            r = kv("put", "k", "v", endpoints=f"127.0.0.1:{port}")
            if r.returncode == 0:
                break
        assert r is not None and r.returncode == 0, r.stderr if r else ""
        assert kv("get", "k", endpoints=f"127.0.0.1:{port}").stdout == "v\n"
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=20)
    assert "UNSAFE_ACK_BEFORE_COMMIT" in err and "level=ERROR" in err
