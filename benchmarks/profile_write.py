#!/usr/bin/env python3
"""Where a write spends its time in a kvstore node: py-spy on the leader under load.

    python benchmarks/profile_write.py                       # writes, 64 clients, 10 s
    python benchmarks/profile_write.py --clients 256 --workload strong-reads

Starts a 3-node cluster on 127.0.0.1:47201-47203 (metrics 47301-47303), drives it with
`kvstore bench` (2 load processes), and meanwhile
- samples the leader and one follower with py-spy (samples holding the GIL, all threads),
- reads each node's CPU time from /proc, and
- takes the node metrics before and after (persist time, ops per entry, proposal latency).
Writes bench-out/profile/{leader,follower}.collapsed (open in speedscope.app or feed to
flamegraph.pl), bench.json, and summary.md (the tables PROFILE.md quotes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from clusters import KvstoreCluster  # noqa: E402

from kvstore.bench.stacks import format_summary, summarize  # noqa: E402

WORKLOADS = {
    "writes": ["--read-ratio", "0"],
    "strong-reads": ["--read-ratio", "1", "--read-mode", "strong"],
    "eventual-reads": ["--read-ratio", "1", "--read-mode", "eventual"],
}
_SAMPLE = re.compile(r"^([a-z_]+)(?:\{([^}]*)\})?\s+([0-9.eE+-]+|NaN)$")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def scrape(port: int) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (labels as printed)."""
    for attempt in range(50):  # the metrics server may come up after the gRPC port
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            break
        except OSError:
            if attempt == 49:
                raise
            time.sleep(0.2)
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(3) != "NaN":
            out[f"{m.group(1)}{{{m.group(2) or ''}}}"] = float(m.group(3))
    return out


def metric(snap: dict[str, float], name: str) -> float:
    """Sum of every sample of `name` (all label sets)."""
    return sum(v for k, v in snap.items() if k.split("{", 1)[0] == name)


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick  # utime + stime


PHASES = (
    ("queued -> proposed (wait for the driver loop)", "queued", "proposed"),
    ("proposed -> appended (leader persist, fsync)", "proposed", "appended"),
    ("appended -> seen committed (replicate: follower persist + ack)", "appended", "commit_seen"),
    ("seen committed -> applied (apply transaction, fsync)", "commit_seen", "applied"),
    ("applied -> answered", "applied", "answered"),
    ("total inside the leader: queued -> answered", "queued", "answered"),
)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))]


def _read_trace(path: Path) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"entries": [], "iterations": [], "inbox_waits": []}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # the node may have been stopped mid-line
        if "entry" in rec:
            out["entries"].append(rec)
        out["iterations"] += rec.get("iterations", [])
        out["inbox_waits"] += rec.get("inbox_waits", [])
    return out


def trace_tables(leader: Path, follower: Path, t0: float, t1: float) -> list[str]:
    """Per-write phase times inside the leader, and driver-loop occupancy, in the window."""
    if not leader.exists():
        return ["", "(no trace from the leader)"]
    data = _read_trace(leader)
    recs = [
        r
        for r in data["entries"]
        if all(k in r for k in ("queued", "proposed", "appended", "commit_seen", "applied"))
        and "answered" in r
        and t0 <= r["answered"] <= t1
    ]
    out = ["", f"Per-write phases at the leader ({len(recs)} log entries, weighted by ops):", ""]
    out += ["| phase | mean ms | p50 ms | p99 ms |", "|---|---|---|---|"]
    for name, a, b in PHASES:
        xs: list[float] = []
        for r in recs:
            xs += [1000 * (r[b] - r[a])] * max(1, int(r.get("ops", 1)))
        mean = sum(xs) / len(xs) if xs else 0.0
        out.append(f"| {name} | {mean:.2f} | {_pct(xs, 50):.2f} | {_pct(xs, 99):.2f} |")
    for role, path in (("leader", leader), ("follower", follower)):
        if not path.exists():
            continue
        d = _read_trace(path)
        its = [(a, b, p) for a, b, p in d["iterations"] if t0 <= a <= t1]
        waits = [w for a, w in d["inbox_waits"] if t0 <= a <= t1]
        span = t1 - t0
        busy = sum(b - a for a, b, _ in its)
        persist = sum(p for _, _, p in its)
        out += [
            "",
            f"Driver loop of the {role}: {len(its) / span:,.0f} iterations/s, busy "
            f"{100 * busy / span:.0f}% of wall time (awaiting persist {100 * persist / span:.0f}%),"
            f" mean iteration {1000 * busy / max(1, len(its)):.2f} ms; a message waits "
            f"{(sum(waits) / len(waits) * 1000) if waits else 0:.2f} ms (mean) in the inbox.",
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workload", choices=WORKLOADS, default="writes")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0, help="profiled seconds")
    p.add_argument("--processes", type=int, default=2, help="load processes")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--out", default=str(ROOT / "bench-out" / "profile"))
    p.add_argument("--kvstore-args", default="", help="extra `kvstore serve` flags, quoted")
    p.add_argument(
        "--tree",
        default="",
        help="run the nodes from another checkout (e.g. `git archive OLD | tar -x -C DIR`), "
        "to measure before/after a change in the same minutes",
    )
    p.add_argument(
        "--readindex-retry",
        action="store_true",
        help="experiment: periodic heartbeats carry the newest pending ReadIndex context",
    )
    args = p.parse_args(argv)
    spy = shutil.which("py-spy")
    if spy is None:
        log("profile_write: py-spy not found; pip install py-spy")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    traces = {i: out / f"trace-node{i}.json" for i in (1, 2, 3)}
    for t in traces.values():
        t.unlink(missing_ok=True)
    with KvstoreCluster(
        out / "kvstore-data",
        base_port=47200,
        extra_args=args.kvstore_args.split(),
        launcher=[str(Path(__file__).resolve().parent / "traced_node.py")],
        env_for=lambda i: {
            "KVSTORE_TRACE_OUT": str(traces[i]),
            "KVSTORE_TREE": args.tree,
            "KVSTORE_TRACE_READINDEX_RETRY": "1" if args.readindex_retry else "",
        },
    ) as kv:
        pids = dict(zip(kv.ids, kv.group.pids(), strict=True))
        mports = dict(zip(kv.ids, kv.metrics_ports, strict=True))
        leader = next(
            (i for i in kv.ids if metric(scrape(mports[i]), "kvstore_is_leader") >= 1), None
        )
        if leader is None:
            log("profile_write: no leader found in the metrics")
            return 1
        follower = next(i for i in kv.ids if i != leader)
        log(f"== leader is node {leader} (pid {pids[leader]}); follower {follower}")
        bench = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kvstore.bench",
                "--endpoints",
                ",".join(kv.endpoints),
                "--clients",
                str(args.clients),
                "--processes",
                str(args.processes),
                "--warmup",
                "2",
                "--duration",
                str(args.duration + 1),
                "--json",
                str(out / "bench.json"),
                *WORKLOADS[args.workload],
            ],
            cwd=ROOT,
        )
        # Wait past preload and warmup, so the profile sees the steady state only.
        time.sleep(3.5 if args.workload == "writes" else 6.0)
        before = {i: scrape(mports[i]) for i in kv.ids}
        cpu0 = {i: proc_cpu_s(pids[i]) for i in kv.ids}
        t0 = time.monotonic()
        spies = [
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pids[node]),
                    "--duration",
                    str(int(args.duration)),
                    "--rate",
                    str(args.rate),
                    "--threads",
                    "--full-filenames",
                    # Only samples that hold the GIL: Python code running, not waiting.
                    "--gil",
                    "--format",
                    "raw",
                    "--output",
                    str(out / f"{role}.collapsed"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for role, node in (("leader", leader), ("follower", follower))
        ]
        for s in spies:
            s.wait()
        t1 = time.monotonic()
        elapsed = t1 - t0
        cpu1 = {i: proc_cpu_s(pids[i]) for i in kv.ids}
        after = {i: scrape(mports[i]) for i in kv.ids}
        bench.wait()
    report = [f"# Profile: {args.workload}, {args.clients} clients, {args.duration:g}s", ""]
    report += ["| node | role | CPU (cores) |", "|---|---|---|"]
    for i in kv.ids:
        role = "leader" if i == leader else "follower"
        report.append(f"| {i} | {role} | {(cpu1[i] - cpu0[i]) / elapsed:.2f} |")
    b, a = before[leader], after[leader]

    def delta(name: str, snap_a: dict[str, float] = a, snap_b: dict[str, float] = b) -> float:
        return metric(snap_a, name) - metric(snap_b, name)

    persists = delta("kvstore_persist_seconds_count")
    entries = delta("kvstore_entry_ops_count")
    props = delta("kvstore_proposal_seconds_count")
    fb, fa = before[follower], after[follower]
    f_persists = metric(fa, "kvstore_persist_seconds_count") - metric(
        fb, "kvstore_persist_seconds_count"
    )
    f_persist_s = metric(fa, "kvstore_persist_seconds_sum") - metric(
        fb, "kvstore_persist_seconds_sum"
    )
    rows = [
        ("leader persist transactions (fsyncs) /s", persists / elapsed),
        (
            "leader mean persist time (ms)",
            1000 * delta("kvstore_persist_seconds_sum") / persists if persists else 0,
        ),
        (
            "leader share of wall time in persist",
            delta("kvstore_persist_seconds_sum") / elapsed,
        ),
        ("follower persist transactions /s", f_persists / elapsed),
        ("follower mean persist time (ms)", 1000 * f_persist_s / f_persists if f_persists else 0),
        ("log entries proposed /s", entries / elapsed),
        ("client ops per log entry", delta("kvstore_entry_ops_sum") / entries if entries else 0),
        (
            "mean proposal latency at the leader (ms): queued -> applied",
            1000 * delta("kvstore_proposal_seconds_sum") / props if props else 0,
        ),
        (
            "consensus messages sent by the leader /s",
            delta("kvstore_messages_sent_total") / elapsed,
        ),
    ]
    report += ["", "| leader metric over the profiled window | value |", "|---|---|"]
    report += [f"| {k} | {v:,.2f} |" for k, v in rows]
    report += trace_tables(traces[leader], traces[follower], t0, t1)
    for role in ("leader", "follower"):
        f = out / f"{role}.collapsed"
        if f.exists():
            report += ["", format_summary(summarize(f.read_text().splitlines()), role)]
    text = "\n".join(report)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
