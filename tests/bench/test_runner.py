"""The multi-process runner end to end against the in-memory null target."""

from __future__ import annotations

import pytest

from kvstore.bench.runner import run
from kvstore.bench.workload import WorkloadSpec


def test_two_load_processes_merge_their_counts_and_report_progress() -> None:
    spec = WorkloadSpec(clients=5, duration_s=1.0, warmup_s=0.0, keys=10, read_ratio=0.5)
    ticks: list[tuple[int, int]] = []
    res = run(
        "null",
        [],
        spec,
        processes=2,
        progress=lambda second, measuring, ops, errors, h, so_far: ticks.append((second, ops)),
    )
    assert res.processes == 2
    assert res.reads.ops > 0 and res.writes.ops > 0
    assert res.all_ops.hist.count == res.all_ops.ops
    assert res.all_ops.error_count == 0
    assert res.throughput == pytest.approx(res.all_ops.ops / 1.0)
    assert [s for s, _ in ticks] == [1]
    assert res.load_cpu_s > 0
    assert res.total_cpu_s >= res.load_cpu_s * 0.5


def test_a_failing_target_fails_the_run_with_its_error() -> None:
    from kvstore.bench.runner import BenchError

    with pytest.raises(BenchError, match="unknown target"):
        run("nonesuch", ["127.0.0.1:1"], WorkloadSpec(duration_s=0.2, warmup_s=0.0))
