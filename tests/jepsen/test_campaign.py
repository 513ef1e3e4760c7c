"""Campaign bookkeeping: the plan, the index page, the summary, stopping at an anomaly.

The runs themselves are real Jepsen runs (tests/jepsen/test_runs.py::test_short_campaign
runs a short campaign with --jepsen); here a stand-in for one run returns a verdict by
seed, so that what the campaign does with verdicts can be checked in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvstore.jepsen import campaign
from kvstore.jepsen.campaign import CampaignConfig, exit_code, plan, run_campaign
from kvstore.jepsen.hosts import HarnessError, LockBusy
from kvstore.jepsen.runner import Progress, RunConfig, RunResult


def _cfg(tmp_path: Path, **kw: object) -> CampaignConfig:
    base = dict(
        runs=3,
        nemeses=("partition", "kill"),
        cores=("raft", "paxos"),
        workloads=("register", "append"),
        time_limit=5.0,
        out=tmp_path / "camp",
        seed=10,
    )
    base.update(kw)
    return CampaignConfig(**base)  # type: ignore[arg-type]


def test_plan_interleaves_pairs_and_seeds(tmp_path: Path) -> None:
    runs = plan(_cfg(tmp_path))
    assert len(runs) == 12
    first = [(r.consensus, r.nemesis, r.seed) for r in runs[:4]]
    assert first == [
        ("raft", "partition", 10),
        ("raft", "kill", 10),
        ("paxos", "partition", 10),
        ("paxos", "kill", 10),
    ]
    assert {r.seed for r in runs} == {10, 11, 12}
    assert {r.workload for r in runs} == {"register", "append"}
    assert len({r.out for r in runs}) == 12 and all(r.time_limit == 5.0 for r in runs)


def _by_seed(invalid: set[int], broken: set[int]) -> object:
    def runner(rc: RunConfig, progress: Progress) -> RunResult:
        assert rc.out is not None and rc.seed is not None
        if rc.seed in broken:
            raise HarnessError("no bridge")
        bad = rc.seed in invalid and rc.nemesis == "kill"
        return RunResult(
            verdict="invalid" if bad else "valid",
            out=rc.out,
            anomalies=["lost-write k1: 7"] if bad else [],
            counts={"ok": 100 + rc.seed, "info": 1},
        )

    return runner


def test_index_and_summary_name_every_run(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    rows = run_campaign(cfg, _by_seed(set(), set()), progress=lambda s: None)  # type: ignore[arg-type]
    assert len(rows) == 12 and exit_code(rows) == 0
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["anomalies"] == 0 and summary["planned"] == 12
    assert summary["totals"]["all"]["valid"] == 12
    assert summary["totals"]["paxos/kill"]["runs"] == 3
    assert summary["commit"]
    page = (cfg.out / "index.html").read_text()
    assert page.count('<a href="') == 12 and "raft-kill-append-11/report.html" in page


def test_stops_on_the_first_anomaly_when_asked(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, stop_on_anomaly=True)
    rows = run_campaign(cfg, _by_seed({11}, set()), progress=lambda s: None)  # type: ignore[arg-type]
    assert rows[-1].verdict == "invalid" and rows[-1].seed == 11 and len(rows) == 6
    assert exit_code(rows) == 1
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["anomalies"] == 1 and len(summary["runs"]) == 6
    assert "lost-write" in (cfg.out / "index.html").read_text()


def test_harness_failures_are_rows_not_crashes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, runs=2)
    rows = run_campaign(cfg, _by_seed(set(), {10}), progress=lambda s: None)  # type: ignore[arg-type]
    assert [r.verdict for r in rows].count("harness-failure") == 4
    assert exit_code(rows) == 2


def test_a_run_waits_for_the_lock_instead_of_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(campaign, "LOCK_POLL", 0.01)
    busy = {"left": 3}
    inner = _by_seed(set(), set())

    def runner(rc: RunConfig, progress: Progress) -> RunResult:
        if busy["left"]:
            busy["left"] -= 1
            raise LockBusy("another Jepsen run holds the lock")
        return inner(rc, progress)  # type: ignore[operator,no-any-return]

    rows = run_campaign(_cfg(tmp_path, runs=1), runner, progress=lambda s: None)
    assert [r.verdict for r in rows] == ["valid"] * 4
    rows = run_campaign(
        _cfg(tmp_path, runs=1, lock_wait=0.0),
        lambda rc, p: (_ for _ in ()).throw(LockBusy("held")),
        progress=lambda s: None,
    )
    assert {r.verdict for r in rows} == {"harness-failure"}
