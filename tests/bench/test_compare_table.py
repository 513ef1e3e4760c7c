"""The etcd comparison's table: ratios and issue 4's bar, from result rows."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def compare() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module("compare_etcd")
    finally:
        sys.path.remove(str(BENCHMARKS))


def row(system: str, workload: str, clients: int, tput: float, p99: float) -> dict[str, Any]:
    return {
        "system": system,
        "workload": workload,
        "clients": clients,
        "throughput": tput,
        "p50_ms": p99 / 4,
        "p99_ms": p99,
    }


def test_targets_follow_issue_13() -> None:
    m = compare()
    e = row("etcd", "writes", 64, 100, 10)
    assert m.verdict("writes", e, row("kvstore", "writes", 64, 300, 10)) == "met"
    assert m.verdict("writes", e, row("kvstore", "writes", 64, 299, 1)) == "NOT met"
    assert m.verdict("writes", e, row("kvstore", "writes", 64, 500, 11)) == "NOT met"
    one = row("etcd", "writes", 1, 100, 10)
    assert m.verdict("writes", one, row("kvstore", "writes", 1, 100, 50)) == "met"
    assert m.verdict("strong-reads", one, row("kvstore", "strong-reads", 1, 99, 1)) == "NOT met"
    assert m.verdict("eventual-reads", one, row("kvstore", "eventual-reads", 1, 1, 99)) == "-"
    assert m.verdict("writes", None, row("kvstore", "writes", 64, 99, 1)) == "-"
    raft = row("kvstore", "writes", 64, 1000, 10)
    assert m.paxos_verdict(raft, row("kvstore-paxos", "writes", 64, 900, 10)) == "met"
    assert m.paxos_verdict(raft, row("kvstore-paxos", "writes", 64, 899, 10)) == "NOT met"


def test_table_has_every_system_the_ratios_targets_and_gaps() -> None:
    m = compare()
    rows = [
        {**row("etcd", "writes", 64, 2000, 100), "ops_per_leader_cpu_s": 9000.0},
        {**row("kvstore", "writes", 64, 5000, 50), "ops_per_leader_cpu_s": 7000.0},
        row("kvstore-paxos", "writes", 64, 4000, 60),
        row("etcd", "writes", 256, 2500, 400),
    ]
    text = m.table(rows, [m.WORKLOADS["writes"]], [64, 256])
    lines = text.splitlines()
    assert len(lines) == 4
    assert (
        "| writes | 64 | 2,000 | 25.00 | 100.00 | 5,000 | 12.50 | 50.00 | 2.50x | 0.50 "
        "| >= 3x, p99 <= etcd | NOT met | 9,000 | 7,000 | 4,000 | 60.00 | 0.80 | NOT met |" in lines
    )
    assert lines[3].endswith("| - | - | - | - | - |")


def test_cpu_meter_counts_only_the_measured_ticks() -> None:
    import os

    m = compare()
    meter = m.CpuMeter([os.getpid()], os.getpid())
    meter.tick(False, 500)  # warmup: forgotten
    sum(i * i for i in range(300_000))  # burn a little CPU inside the measured window
    meter.tick(True, 100)
    meter.tick(True, 50)
    s = meter.summary()
    assert s["cpu_ops"] == 150
    assert s["leader_cpu_s"] == s["cluster_cpu_s"] >= 0
    if s["leader_cpu_s"] > 0:
        assert s["ops_per_leader_cpu_s"] == round(150 / s["leader_cpu_s"], 1)


def test_table_lists_failed_requests() -> None:
    m = compare()
    rows = [{**row("kvstore", "writes", 64, 10, 1), "errors": 7}]
    assert "kvstore writes @64: 7" in m.table(rows, [m.WORKLOADS["writes"]], [64])
