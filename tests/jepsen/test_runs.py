"""Short Jepsen runs against the real store (needs root, --jepsen; about 45 s each).

The proofs of detection come first: eventual reads under partitions must be caught, and a
build that acknowledges writes before they commit must lose writes under kill. Then each
nemesis on Raft must pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kvstore.jepsen.history import NEMESIS

pytestmark = [
    pytest.mark.jepsen,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("iptables") is None, reason="needs root and iptables"
    ),
]

REPO = Path(__file__).resolve().parents[2]
SECONDS = os.environ.get("KVSTORE_JEPSEN_SECONDS", "20")


def _run(out: Path, *args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [
            sys.executable,
            *("-m", "kvstore.jepsen.cli", "run", "--out", str(out), "--time-limit", SECONDS),
            *("--nodes", "5", "--concurrency", "8", "--nemesis-interval", "4", "--seed", "7"),
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    results = out / "results.json"
    assert results.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "report.html").exists() and (out / "latency.png").exists()
    return done.returncode, json.loads(results.read_text())


def test_eventual_reads_under_partitions_are_caught(tmp_path: Path) -> None:
    code, res = _run(
        tmp_path, "--workload", "register", "--nemesis", "partition", "--read-mode", "eventual"
    )
    assert code == 1, res
    assert any("not linearizable" in a for a in res["anomalies"])


def test_ack_before_commit_loses_writes_under_kill(tmp_path: Path) -> None:
    code, res = _run(
        tmp_path, "--workload", "append", "--nemesis", "kill", "--unsafe-ack-before-commit"
    )
    assert code == 1, res
    assert any(a.startswith("lost-write") for a in res["anomalies"])


def test_ack_before_commit_loses_writes_under_member_changes(tmp_path: Path) -> None:
    """Removing the leader (half the member faults do) drops what it acknowledged early."""
    code, res = _run(
        tmp_path, "--workload", "append", "--nemesis", "member", "--unsafe-ack-before-commit"
    )
    assert code == 1, res
    assert any(a.startswith("lost-write") for a in res["anomalies"])


def test_ack_before_commit_loses_writes_under_disk_faults(tmp_path: Path) -> None:
    """A node stopped for damage (the leader half the time) loses what it acked early."""
    code, res = _run(
        tmp_path, "--workload", "append", "--nemesis", "disk", "--unsafe-ack-before-commit"
    )
    assert code == 1, res
    assert any(a.startswith("lost-write") for a in res["anomalies"])


def test_eventual_reads_break_session_guarantees(tmp_path: Path) -> None:
    code, res = _run(
        tmp_path, "--workload", "session", "--nemesis", "partition", "--read-mode", "eventual"
    )
    assert code == 1, res
    assert any(a.startswith(("read-your-writes", "monotonic-reads")) for a in res["anomalies"])


@pytest.mark.parametrize(
    ("workload", "nemesis"),
    # partition and kill on both cores: test_short_campaign; the long campaign is
    # `kvstore jepsen campaign` (benchmarks/results/jepsen-campaign-*.md)
    [
        ("register", "pause"),
        ("register", "clock"),
        ("register", "loss"),
        ("register", "member"),
        ("register", "disk"),
        ("session", "partition"),
        ("append", "all"),
    ],
)
def test_raft_passes(tmp_path: Path, workload: str, nemesis: str) -> None:
    code, res = _run(tmp_path, "--workload", workload, "--nemesis", nemesis)
    assert code == 0, res
    assert res["verdict"] == "valid"
    assert res["counts"]["ok"] > 100


def test_a_tls_run_passes(tmp_path: Path) -> None:
    """`--tls` (issue 14): mutual TLS between nodes and clients, here on Multi-Paxos
    under kill -9 (restarted nodes rejoin over TLS)."""
    code, res = _run(
        tmp_path, "--workload", "register", "--nemesis", "kill", "--consensus", "paxos", "--tls"
    )
    assert code == 0, res
    assert res["verdict"] == "valid" and res["config"]["tls"] is True
    assert res["counts"]["ok"] > 100
    assert (tmp_path / "certs" / "ca.pem").exists()
    assert "tls=True" in (tmp_path / "nodes" / "n1.log").read_text(), "the nodes served TLS"


def test_raft_shard_nemesis_on_four_shards(tmp_path: Path) -> None:
    """Splits at written keys, merges, leader transfers and moves during traffic, 4
    shards x 3 replicas."""
    code, res = _run(
        tmp_path,
        *("--workload", "register", "--nemesis", "shard", "--shards", "4"),
        # seed 9 at this interval plans a split, then merges, transfers and a move (the
        # schedule is seeded; the split's halves share nodes, so a merge can follow)
        *("--nemesis-interval", "2", "--seed", "9"),
    )
    assert code == 0, res
    assert res["verdict"] == "valid"
    assert res["counts"]["ok"] > 100
    events = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    done = " ".join(str(e["value"]) for e in events if e["process"] == NEMESIS)
    assert "new shard" in done and "leader n" in done and "move shard" in done, done
    assert "merged shard" in done, done


def test_short_campaign(tmp_path: Path) -> None:
    """CI's campaign: one short run per nemesis and core (the long one is an option)."""
    out = tmp_path / "camp"
    done = subprocess.run(
        [
            sys.executable,
            *("-m", "kvstore.jepsen.cli", "campaign", "--runs", "1", "--out", str(out)),
            *("--nemesis", "partition,kill", "--consensus", "raft,paxos", "--time-limit", "8"),
            *("--nodes", "3", "--concurrency", "6", "--nemesis-interval", "3", "--seed", "3"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert summary["anomalies"] == 0 and summary["totals"]["all"]["valid"] == 4
    assert (out / "index.html").exists()
