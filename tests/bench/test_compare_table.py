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


def test_verdict_needs_throughput_and_p99() -> None:
    v = compare().verdict
    assert v(row("etcd", "w", 1, 100, 10), row("kvstore", "w", 1, 100, 10)) == "yes"
    assert v(row("etcd", "w", 1, 100, 10), row("kvstore", "w", 1, 300, 9)) == "goal"
    assert v(row("etcd", "w", 1, 100, 10), row("kvstore", "w", 1, 500, 11)) == "no"
    assert v(row("etcd", "w", 1, 100, 10), row("kvstore", "w", 1, 99, 1)) == "no"
    assert v(None, row("kvstore", "w", 1, 99, 1)) == "-"


def test_table_has_both_systems_the_ratios_and_gaps() -> None:
    m = compare()
    rows = [
        row("etcd", "writes", 64, 2000, 100),
        row("kvstore", "writes", 64, 5000, 50),
        row("etcd", "writes", 256, 2500, 400),
    ]
    text = m.table(rows, [m.WORKLOADS["writes"]], [64, 256])
    lines = text.splitlines()
    assert len(lines) == 4
    assert (
        "| writes | 64 | 2,000 | 25.00 | 100.00 | 5,000 | 12.50 | 50.00 | 2.50x | 0.50 | yes |"
        in lines
    )
    assert lines[3].endswith("| - | - | - |")


def test_table_lists_failed_requests() -> None:
    m = compare()
    rows = [{**row("kvstore", "writes", 64, 10, 1), "errors": 7}]
    assert "kvstore writes @64: 7" in m.table(rows, [m.WORKLOADS["writes"]], [64])
