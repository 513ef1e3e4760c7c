"""Campaigns: many seeded fault runs one after another, summed up in one index page.

``kvstore jepsen campaign --runs N --nemesis LIST --consensus raft,paxos --time-limit S
--out DIR`` makes N runs for every (nemesis, core) pair, with seeds ``--seed``,
``--seed``+1, ... (run i of every pair has the same seed), interleaved so that a campaign
cut short still covers every pair. Each run is an ordinary ``kvstore jepsen run`` with its
report in ``DIR/<core>-<nemesis>-<workload>-<seed>/``. ``--stop-on-anomaly`` ends the
campaign at the first invalid run. A run that finds another Jepsen run holding the
machine's run lock waits for it (up to 15 minutes) instead of failing.

Written into DIR, and rewritten after every run (so an interrupted campaign still leaves
them): ``index.html`` (one row per run: seed, core, nemesis, workload, operations, verdict,
link to the run's report; totals per nemesis and core) and ``summary.json`` (the same rows,
the totals, the commit and the settings). Exit codes: 0 every run valid, 1 an anomaly
found, 2 none found but some run failed to run or decided nothing.
Only :func:`run_campaign` and :func:`write_summary` perform I/O.
"""

from __future__ import annotations

import html
import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from kvstore.jepsen.hosts import HarnessError, LockBusy
from kvstore.jepsen.runner import Progress, RunConfig, RunResult

Runner = Callable[[RunConfig, Progress], RunResult]
LOCK_POLL = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CampaignConfig:
    runs: int
    nemeses: tuple[str, ...]
    cores: tuple[str, ...]
    workloads: tuple[str, ...] = ("register",)
    time_limit: float = 30.0
    out: Path = Path("jepsen-campaign")
    seed: int = 1
    stop_on_anomaly: bool = False
    lock_wait: float = 900.0
    """Seconds a run waits for another Jepsen run (on this machine) to finish."""
    base: RunConfig = field(default_factory=RunConfig)
    """Everything else a run takes (nodes, concurrency, interval...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    seed: int
    consensus: str
    nemesis: str
    workload: str
    verdict: str  # valid | invalid | unknown | harness-failure
    ops: int
    seconds: float
    report: str  # relative to the campaign directory
    anomalies: tuple[str, ...] = ()


def plan(cfg: CampaignConfig) -> list[RunConfig]:
    """The runs, interleaved: run i of every (core, nemesis) pair before run i+1 of any."""
    out = []
    k = 0
    for i in range(cfg.runs):
        for core in cfg.cores:
            for nemesis in cfg.nemeses:
                seed = cfg.seed + i
                workload = cfg.workloads[k % len(cfg.workloads)]
                k += 1
                out.append(
                    replace(
                        cfg.base,
                        consensus=core,
                        nemesis=nemesis,
                        workload=workload,
                        time_limit=cfg.time_limit,
                        seed=seed,
                        out=cfg.out / f"{core}-{nemesis}-{workload}-{seed}",
                    )
                )
    return out


def totals(rows: Sequence[Row]) -> dict[str, dict[str, int]]:
    """Verdict counts per ``core/nemesis`` and over all runs (key ``all``)."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        for key in (f"{r.consensus}/{r.nemesis}", "all"):
            counts = out.setdefault(key, {})
            counts[r.verdict] = counts.get(r.verdict, 0) + 1
            counts["runs"] = counts.get("runs", 0) + 1
            counts["ops"] = counts.get("ops", 0) + r.ops
    return out


def exit_code(rows: Sequence[Row]) -> int:
    verdicts = {r.verdict for r in rows}
    if "invalid" in verdicts:
        return 1
    return 0 if rows and verdicts == {"valid"} else 2


def commit() -> str:
    here = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def render_index(cfg: CampaignConfig, rows: Sequence[Row], *, planned: int, rev: str) -> str:
    esc = html.escape
    colors = {"valid": "#d9f2d9", "invalid": "#f7c6c6"}
    body = []
    for r in rows:
        color = colors.get(r.verdict, "#fbe3c0")
        first = esc(r.anomalies[0].splitlines()[0]) if r.anomalies else ""
        body.append(
            f'<tr style="background:{color}"><td>{r.seed}</td><td>{esc(r.consensus)}</td>'
            f"<td>{esc(r.nemesis)}</td><td>{esc(r.workload)}</td><td>{r.ops}</td>"
            f"<td><b>{esc(r.verdict)}</b></td><td>{r.seconds:.0f}s</td>"
            f'<td><a href="{esc(r.report)}">report</a></td><td>{first}</td></tr>'
        )
    sums = []
    for key, c in sorted(totals(rows).items()):
        counts = ", ".join(f"{v} {k}" for k, v in sorted(c.items()) if k not in ("runs", "ops"))
        sums.append(
            f"<tr><td>{esc(key)}</td><td>{c['runs']}</td><td>{c['ops']}</td>"
            f"<td>{esc(counts)}</td></tr>"
        )
    return (
        "<!doctype html><meta charset=utf-8><title>kvstore jepsen campaign</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}</style>"
        f"<h1>kvstore jepsen campaign</h1><p>commit {esc(rev)}; {len(rows)} of {planned} runs; "
        f"nemeses {esc(', '.join(cfg.nemeses))}; cores {esc(', '.join(cfg.cores))}; "
        f"workloads {esc(', '.join(cfg.workloads))}; {cfg.time_limit:.0f}s each; "
        f"seeds from {cfg.seed}</p>"
        "<h2>Totals</h2><table><tr><th>core/nemesis</th><th>runs</th><th>operations</th>"
        f"<th>verdicts</th></tr>{''.join(sums)}</table>"
        "<h2>Runs</h2><table><tr><th>seed</th><th>core</th><th>nemesis</th><th>workload</th>"
        "<th>operations</th><th>verdict</th><th>time</th><th></th><th>first anomaly</th></tr>"
        f"{''.join(body)}</table>\n"
    )


def write_summary(cfg: CampaignConfig, rows: Sequence[Row], *, planned: int, rev: str) -> None:
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "index.html").write_text(
        render_index(cfg, rows, planned=planned, rev=rev), encoding="utf-8"
    )
    settings = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "base"
    }
    summary: dict[str, Any] = {
        "commit": rev,
        "planned": planned,
        "settings": settings,
        "totals": totals(rows),
        "anomalies": sum(r.verdict == "invalid" for r in rows),
        "runs": [asdict(r) for r in rows],
    }
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def run_campaign(cfg: CampaignConfig, runner: Runner, progress: Progress = print) -> list[Row]:
    """Runs the plan one run at a time; returns the rows (also written into ``cfg.out``)."""
    runs = plan(cfg)
    rev = commit()
    rows: list[Row] = []
    write_summary(cfg, rows, planned=len(runs), rev=rev)
    for n, rc in enumerate(runs, 1):
        assert rc.out is not None and rc.seed is not None
        progress(
            f"campaign run {n}/{len(runs)}: {rc.consensus} {rc.nemesis} {rc.workload} "
            f"seed {rc.seed}"
        )
        t0 = time.monotonic()
        waited = 0.0
        while True:
            try:
                result = runner(rc, lambda s: None)
                verdict, anomalies = result.verdict, tuple(result.anomalies)
                ops = result.counts.get("ok", 0) + result.counts.get("info", 0)
            except LockBusy as e:
                # someone else's run: wait for it rather than lose this one
                if waited < cfg.lock_wait:
                    time.sleep(LOCK_POLL)
                    waited += LOCK_POLL
                    continue
                verdict, anomalies, ops = "harness-failure", (str(e),), 0
            except HarnessError as e:
                verdict, anomalies, ops = "harness-failure", (str(e),), 0
            break
        rows.append(
            Row(
                seed=rc.seed,
                consensus=rc.consensus,
                nemesis=rc.nemesis,
                workload=rc.workload,
                verdict=verdict,
                ops=ops,
                seconds=time.monotonic() - t0,
                report=str(rc.out.relative_to(cfg.out) / "report.html"),
                anomalies=anomalies,
            )
        )
        write_summary(cfg, rows, planned=len(runs), rev=rev)
        progress(f"  -> {verdict} ({ops} operations)" + (f": {anomalies[0]}" if anomalies else ""))
        if verdict == "invalid" and cfg.stop_on_anomaly:
            progress("campaign stopped at the first anomaly (--stop-on-anomaly)")
            break
    return rows
