#!/usr/bin/env python3
"""kvstore vs etcd 3.4, side by side on this machine, in one run.

    python benchmarks/compare_etcd.py            # 1, 64, 256 clients; 10 s per point
    python benchmarks/compare_etcd.py --quick    # 64 and 256 clients; 3 s per point

Starts a 3-node kvstore cluster (ports 47001-47003) and a 3-member etcd cluster (Debian's
etcd-server, installed with apt if missing; ports 48001-48003, peers 48101-48103), both on
loopback with their data on disk and fsync on (etcd's defaults), both up for the whole
run. The same closed-loop generator (kvstore.bench.runner, async Python gRPC clients in
--processes load processes) drives three workloads against each: writes, strong reads
(etcd: linearizable Range) and eventual reads (etcd: serializable Range), 256-byte values
over 1,000 keys. The systems alternate point by point (--repeat N: N runs a point, order
swapped each time, the median kept), so background load on a shared machine falls on
both alike.
Writes bench-out/compare/{results.json, table.md, compare.png}.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from clusters import EtcdCluster, KvstoreCluster, etcd_version  # noqa: E402

from kvstore.bench.cli import progress_printer  # noqa: E402
from kvstore.bench.report import BenchResult, write_json  # noqa: E402
from kvstore.bench.runner import run, run_preload  # noqa: E402
from kvstore.bench.workload import WorkloadSpec  # noqa: E402


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    name: str
    read_ratio: float
    read_mode: str


WORKLOADS = {
    "writes": Workload(name="writes", read_ratio=0.0, read_mode="strong"),
    "strong-reads": Workload(name="strong-reads", read_ratio=1.0, read_mode="strong"),
    "eventual-reads": Workload(name="eventual-reads", read_ratio=1.0, read_mode="eventual"),
}
SYSTEMS = ("etcd", "kvstore")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="64 and 256 clients, 3 s per point")
    p.add_argument("--clients", default=None, help="comma-separated (default 1,64,256)")
    p.add_argument("--duration", type=float, default=None, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="warmup seconds per point")
    p.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {','.join(WORKLOADS)}",
    )
    p.add_argument("--systems", default=",".join(SYSTEMS), help="etcd,kvstore or one of them")
    p.add_argument("--processes", type=int, default=2, help="load processes (default 2)")
    p.add_argument(
        "--repeat", type=int, default=1, help="runs per point, alternating systems; median kept"
    )
    p.add_argument("--value-size", type=int, default=256)
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--out", default=str(ROOT / "bench-out" / "compare"), help="output folder")
    p.add_argument("--kvstore-args", default="", help="extra `kvstore serve` flags, quoted")
    args = p.parse_args(argv)
    if args.clients is None:
        args.clients = "64,256" if args.quick else "1,64,256"
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_point(
    system: str, endpoints: list[str], spec: WorkloadSpec, args: argparse.Namespace
) -> dict[str, Any]:
    log(f"== {system}: {spec.describe()}")
    load_before = os.getloadavg()[0]
    result: BenchResult = run(
        system,
        endpoints,
        spec,
        processes=args.processes,
        progress=progress_printer(system, spec.warmup_s + spec.duration_s),
    )
    s = result.summary()
    log(
        f"   {system} @{spec.clients}: {s['throughput']:,.0f} ops/s, p50 {s['p50_ms']:.2f} ms, "
        f"p99 {s['p99_ms']:.2f} ms, errors {s['errors']}, generator {s['load_cores']:.2f} cores, "
        f"machine load {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    return {
        **s,
        "system": system,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg()[0],
        "detail": result.to_dict(),
    }


def run_all(
    clusters: dict[str, list[str]],
    workloads: list[Workload],
    clients: list[int],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Every point for every system; systems alternate point by point (and swap order each
    repeat) so that background load on a shared machine falls on both alike. The row kept
    for a point is the repeat with the median throughput; all repeats stay in `runs`."""
    rows: list[dict[str, Any]] = []
    preloaded: set[str] = set()
    systems = list(clusters)
    for wl in workloads:
        for n in clients:
            spec = WorkloadSpec(
                clients=n,
                duration_s=args.duration,
                warmup_s=args.warmup,
                value_size=args.value_size,
                keys=args.keys,
                read_ratio=wl.read_ratio,
                read_mode=wl.read_mode,
            ).validate()
            runs: dict[str, list[dict[str, Any]]] = {sys_: [] for sys_ in systems}
            for r in range(args.repeat):
                for system in systems if r % 2 == 0 else systems[::-1]:
                    if wl.read_ratio > 0 and system not in preloaded:
                        log(f"== {system}: writing all {args.keys} keys once before the reads")
                        run_preload(system, clusters[system], spec, 10.0)
                        preloaded.add(system)
                    row = run_point(system, clusters[system], spec, args)
                    runs[system].append({**row, "workload": wl.name})
            for system in systems:
                ordered = sorted(runs[system], key=lambda x: x["throughput"])
                keep = dict(ordered[len(ordered) // 2])
                keep["runs"] = [{k: v for k, v in x.items() if k != "detail"} for x in runs[system]]
                rows.append(keep)
    return rows


def verdict(etcd: dict[str, Any] | None, ours: dict[str, Any] | None) -> str:
    """Issue 4's bar: throughput >= etcd's and p99 no worse ("goal" at 3x throughput)."""
    if not etcd or not ours or etcd["throughput"] <= 0:
        return "-"
    ratio = ours["throughput"] / etcd["throughput"]
    if ratio >= 1.0 and ours["p99_ms"] <= etcd["p99_ms"]:
        return "goal" if ratio >= 3.0 else "yes"
    return "no"


def table(rows: list[dict[str, Any]], workloads: list[Workload], clients: list[int]) -> str:
    """A Markdown table: both systems per point, the throughput and p99 ratios, the bar."""
    by = {(r["system"], r["workload"], r["clients"]): r for r in rows}
    head = (
        "| workload | clients | etcd ops/s | etcd p50 ms | etcd p99 ms "
        "| kvstore ops/s | kvstore p50 ms | kvstore p99 ms | throughput ratio | p99 ratio "
        "| bar met |"
    )
    lines = [head, "|" + "---|" * 11]

    def cell(r: dict[str, Any] | None, f: str, fmt: str) -> str:
        return format(r[f], fmt) if r else "-"

    for wl in workloads:
        for n in clients:
            e, k = by.get(("etcd", wl.name, n)), by.get(("kvstore", wl.name, n))
            ratio = (
                f"{k['throughput'] / e['throughput']:.2f}x"
                if e and k and e["throughput"] > 0
                else "-"
            )
            p99 = f"{k['p99_ms'] / e['p99_ms']:.2f}" if e and k and e["p99_ms"] > 0 else "-"
            lines.append(
                f"| {wl.name} | {n} | {cell(e, 'throughput', ',.0f')} | {cell(e, 'p50_ms', '.2f')}"
                f" | {cell(e, 'p99_ms', '.2f')} | {cell(k, 'throughput', ',.0f')}"
                f" | {cell(k, 'p50_ms', '.2f')} | {cell(k, 'p99_ms', '.2f')} | {ratio} | {p99}"
                f" | {verdict(e, k)} |"
            )
    failed = [
        f"{r['system']} {r['workload']} @{r['clients']}: {r['errors']:,}"
        for r in rows
        if r.get("errors")
    ]
    if failed:
        lines += ["", "Failed requests (not in the latencies above): " + "; ".join(failed)]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], workloads: list[Workload], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(workloads), figsize=(5 * len(workloads), 7), squeeze=False)
    for col, wl in enumerate(workloads):
        for system, style in (("etcd", "s--"), ("kvstore", "o-")):
            pts = sorted(
                (r["clients"], r["throughput"], r["p99_ms"])
                for r in rows
                if r["system"] == system and r["workload"] == wl.name
            )
            if not pts:
                continue
            xs = [p[0] for p in pts]
            axes[0][col].plot(xs, [p[1] for p in pts], style, label=system)
            axes[1][col].plot(xs, [p[2] for p in pts], style, label=system)
        axes[0][col].set_title(wl.name)
        axes[0][col].set_ylabel("throughput (ops/s)")
        axes[1][col].set_ylabel("p99 latency (ms)")
        for row in (0, 1):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients")
            ax.grid(True, alpha=0.3)
            if ax.get_lines():
                ax.legend()
            ax.set_ylim(bottom=0)
    fig.suptitle("kvstore vs etcd 3.4: 3 nodes on loopback, fsync on, 256 B values")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        clients = [int(c) for c in args.clients.split(",") if c.strip()]
        workloads = [WORKLOADS[w.strip()] for w in args.workloads.split(",") if w.strip()]
        systems = [s.strip() for s in args.systems.split(",") if s.strip()]
        if not set(systems) <= set(SYSTEMS):
            raise KeyError(args.systems)
    except (ValueError, KeyError) as e:
        log(f"compare_etcd: bad option: {e}")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    versions: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        clusters: dict[str, list[str]] = {}
        for system in systems:
            if system == "etcd":
                etcd = stack.enter_context(EtcdCluster(out / "etcd-data"))
                versions["etcd"] = etcd_version(etcd.binary)
                log(f"== etcd {versions['etcd']} up at {','.join(etcd.endpoints)}")
                clusters["etcd"] = etcd.endpoints
            else:
                kv = stack.enter_context(
                    KvstoreCluster(out / "kvstore-data", extra_args=args.kvstore_args.split())
                )
                log(f"== kvstore up at {','.join(kv.endpoints)}")
                clusters["kvstore"] = kv.endpoints
        rows = run_all(clusters, workloads, clients, args)
    md = table(rows, workloads, clients)
    print(md)
    (out / "table.md").write_text(md + "\n")
    write_json(
        out / "results.json",
        {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "elapsed_s": round(time.time() - started, 1),
            "machine": {
                "cpus": _cpus(),
                "python": platform.python_version(),
                "loadavg_at_end": os.getloadavg(),
            },
            "versions": versions,
            "options": vars(args),
            "rows": rows,
        },
    )
    plot(rows, workloads, out / "compare.png")
    log(f"== wrote {out / 'table.md'}, {out / 'results.json'}, {out / 'compare.png'}")
    return 0


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
