"""Workload validation, client splitting and result summaries of the load generator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvstore.bench.report import BenchResult, OpStats, write_json
from kvstore.bench.workload import WorkloadSpec, key_name, split_clients


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("clients", 0, "--clients"),
        ("duration_s", 0.0, "--duration"),
        ("warmup_s", -1.0, "--warmup"),
        ("value_size", -1, "--value-size"),
        ("keys", 0, "--keys"),
        ("read_ratio", 1.5, "--read-ratio"),
        ("read_mode", "sloppy", "--read-mode"),
    ],
)
def test_bad_spec_names_the_option(field: str, value: object, message: str) -> None:
    spec = WorkloadSpec(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        spec.validate()


def test_describe_names_the_workload() -> None:
    assert WorkloadSpec(read_ratio=0.0).describe().startswith("writes, 64 clients")
    assert (
        WorkloadSpec(read_ratio=1.0, read_mode="eventual").describe().startswith("eventual reads")
    )
    assert WorkloadSpec(read_ratio=0.5).describe().startswith("50% strong reads")


def test_keys_are_fixed_width_and_sort_by_number() -> None:
    assert key_name(7) == b"bench/00000007"
    assert sorted([key_name(10), key_name(9)]) == [key_name(9), key_name(10)]


@pytest.mark.parametrize(
    ("clients", "processes", "expected"),
    [(1, 4, [1]), (64, 1, [64]), (64, 3, [22, 21, 21]), (256, 2, [128, 128])],
)
def test_split_clients_is_even_and_never_empty(
    clients: int, processes: int, expected: list[int]
) -> None:
    assert split_clients(clients, processes) == expected


def test_split_clients_rejects_zero() -> None:
    with pytest.raises(ValueError):
        split_clients(0, 1)


def _stats(latencies_us: list[int], errors: dict[str, int] | None = None) -> OpStats:
    s = OpStats(ops=len(latencies_us), errors=dict(errors or {}))
    s.hist.record_many(latencies_us)
    return s


def test_summary_merges_reads_and_writes_before_taking_percentiles() -> None:
    # Percentiles of the union, not an average of per-kind percentiles.
    res = BenchResult(
        target="kvstore",
        endpoints=["127.0.0.1:1"],
        spec=WorkloadSpec(clients=2, duration_s=2.0, read_ratio=0.5),
        processes=1,
        measured_s=2.0,
        reads=_stats([1000] * 100),
        writes=_stats([2000] * 99 + [50_000], {"Unavailable": 3}),
        load_cpu_s=1.0,
    )
    s = res.summary()
    assert s["ops"] == 200
    assert s["throughput"] == 100.0
    assert s["errors"] == 3
    assert s["p50_ms"] == pytest.approx(1.0, rel=1 / 128)
    assert s["p99_ms"] == pytest.approx(2.0, rel=1 / 128)
    assert s["p999_ms"] == 50.0
    assert s["max_ms"] == 50.0
    assert s["load_cores"] == 0.5
    text = res.format_text()
    assert "100.0 ops/s" in text
    assert "Unavailable: 3" in text
    assert "reads" in text and "writes" in text
    assert "retried" not in text


def test_retries_are_reported_with_their_reasons() -> None:
    res = BenchResult(
        target="kvstore",
        endpoints=["127.0.0.1:1"],
        spec=WorkloadSpec(clients=2, duration_s=1.0),
        processes=1,
        measured_s=1.0,
        writes=_stats([1000] * 10),
        retries={"requests": 3, "stream broken": 2, "no answer": 1},
    )
    assert res.summary()["retried"] == 3
    assert res.to_dict()["retries"] == {"requests": 3, "stream broken": 2, "no answer": 1}
    text = res.format_text()
    assert "retries     3 requests retried (no answer: 1, stream broken: 2)" in text


def test_opstats_merge_adds_errors_by_name() -> None:
    a = _stats([1], {"X": 1})
    a.merge(_stats([2, 3], {"X": 2, "Y": 1}))
    assert a.ops == 3
    assert a.errors == {"X": 3, "Y": 1}
    assert OpStats.from_dict(a.to_dict()).to_dict() == a.to_dict()


def test_write_json_creates_parents_and_is_valid(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b.json"
    write_json(out, {"x": 1})
    assert json.loads(out.read_text()) == {"x": 1}
