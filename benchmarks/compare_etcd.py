#!/usr/bin/env python3
"""kvstore vs etcd 3.4, side by side on this machine, in one run, with issue 13's targets.

    python benchmarks/compare_etcd.py            # 1, 64, 256 clients; 10 s per point
    python benchmarks/compare_etcd.py --quick    # 64 and 256 clients; 3 s per point

Starts a 3-node kvstore cluster on Raft (ports 47001-47003), another on Multi-Paxos
(`kvstore-paxos`, ports 47401-47403) and a 3-member etcd cluster (Debian's etcd-server,
installed with apt if missing; ports 48001-48003, peers 48101-48103), all on loopback with
their data on disk and fsync on (etcd's defaults), all up for the whole run. The same
closed-loop generator (kvstore.bench.runner, async Python gRPC clients in --processes load
processes) drives three workloads against each: writes, strong reads (etcd: linearizable
Range) and eventual reads (etcd: serializable Range), 256-byte values over 1,000 keys.
The systems alternate point by point (--repeat N: N runs a point, order rotated each
time, the median kept), so background load on a shared machine falls on all alike.

Every row prints the throughput ratio to etcd, the p99 ratio, the issue's target for that
row (>= 3x etcd with p99 no worse at 64+ clients; >= 1x for one client's writes and strong
reads) and whether it is met; the leader's CPU seconds over the measured window as ops per
leader CPU-second for both systems (a gain that only burns more CPU shows there); and
Paxos against Raft (target: within 10%).
Writes bench-out/compare/{results.json, table.md, compare.png}.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from clusters import EtcdCluster, KvstoreCluster, etcd_version, proc_cpu_s  # noqa: E402

from kvstore.bench.cli import progress_printer  # noqa: E402
from kvstore.bench.histogram import Histogram  # noqa: E402
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
SYSTEMS = ("etcd", "kvstore", "kvstore-paxos")
BENCH_TARGET = {"etcd": "etcd", "kvstore": "kvstore", "kvstore-paxos": "kvstore"}
PAXOS_WITHIN = 0.10
"""Issue 13: Paxos within 10% of Raft on the same workloads."""


class Cluster(Protocol):
    """What a point needs of a running cluster (clusters.EtcdCluster, KvstoreCluster)."""

    @property
    def endpoints(self) -> list[str]: ...

    def leader_pid(self) -> int | None: ...

    def pids(self) -> list[int]: ...


class CpuMeter:
    """CPU seconds of a cluster's processes over the measured seconds of one point, from
    the generator's once-a-second progress ticks: a snapshot at the last warmup tick (or
    the start) and at the last measured tick, with the ops those measured ticks counted."""

    def __init__(self, pids: list[int], leader: int | None) -> None:
        self.pids = pids
        self.leader = leader
        self.start = self._snap()
        self.end = self.start
        self.ops = 0

    def _snap(self) -> dict[int, float]:
        return {p: proc_cpu_s(p) for p in self.pids}

    def tick(self, measuring: bool, ops: int) -> None:
        if measuring:
            self.end = self._snap()
            self.ops += ops
        else:
            self.start = self.end = self._snap()
            self.ops = 0

    def summary(self) -> dict[str, Any]:
        used = {p: self.end[p] - self.start[p] for p in self.pids}
        total = sum(used.values())
        lead = used.get(self.leader, 0.0) if self.leader is not None else 0.0
        return {
            "cpu_ops": self.ops,
            "leader_cpu_s": round(lead, 3),
            "cluster_cpu_s": round(total, 3),
            "ops_per_leader_cpu_s": round(self.ops / lead, 1) if lead > 0 else 0.0,
            "ops_per_cluster_cpu_s": round(self.ops / total, 1) if total > 0 else 0.0,
        }


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
    system: str, cluster: Cluster, spec: WorkloadSpec, args: argparse.Namespace
) -> dict[str, Any]:
    log(f"== {system}: {spec.describe()}")
    load_before = os.getloadavg()[0]
    meter = CpuMeter(cluster.pids(), cluster.leader_pid())
    show = progress_printer(system, spec.warmup_s + spec.duration_s)

    def progress(
        second: int, measuring: bool, ops: int, errors: int, hist: Histogram, so_far: Histogram
    ) -> None:
        meter.tick(measuring, ops)
        show(second, measuring, ops, errors, hist, so_far)

    result: BenchResult = run(
        BENCH_TARGET[system],
        cluster.endpoints,
        spec,
        processes=args.processes,
        progress=progress,
    )
    s = result.summary()
    cpu = meter.summary()
    log(
        f"   {system} @{spec.clients}: {s['throughput']:,.0f} ops/s, p50 {s['p50_ms']:.2f} ms, "
        f"p99 {s['p99_ms']:.2f} ms, errors {s['errors']}, leader {cpu['leader_cpu_s']:.2f} "
        f"CPU-s ({cpu['ops_per_leader_cpu_s']:,.0f} ops per leader CPU-s), generator "
        f"{s['load_cores']:.2f} cores, machine load {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    return {
        **s,
        **cpu,
        "system": system,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg()[0],
        "detail": result.to_dict(),
    }


def run_all(
    clusters: dict[str, Cluster],
    workloads: list[Workload],
    clients: list[int],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Every point for every system; systems alternate point by point (the order rotates
    each repeat) so that background load on a shared machine falls on all alike. The row
    kept for a point is the repeat with the median throughput; all repeats stay in
    `runs`."""
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
                k = r % len(systems)
                for system in systems[k:] + systems[:k]:
                    if wl.read_ratio > 0 and system not in preloaded:
                        log(f"== {system}: writing all {args.keys} keys once before the reads")
                        run_preload(BENCH_TARGET[system], clusters[system].endpoints, spec, 10.0)
                        preloaded.add(system)
                    row = run_point(system, clusters[system], spec, args)
                    runs[system].append({**row, "workload": wl.name})
            for system in systems:
                ordered = sorted(runs[system], key=lambda x: x["throughput"])
                keep = dict(ordered[len(ordered) // 2])
                keep["runs"] = [{k: v for k, v in x.items() if k != "detail"} for x in runs[system]]
                rows.append(keep)
    return rows


def target(workload: str, clients: int) -> tuple[float, bool] | None:
    """Issue 13's target for a row: (least throughput ratio to etcd, p99 must be no worse),
    or None where the issue sets none (one client's eventual reads; 2-63 clients)."""
    if clients >= 64:
        return 3.0, True
    if clients == 1 and workload in ("writes", "strong-reads"):
        return 1.0, False
    return None


def target_text(workload: str, clients: int) -> str:
    t = target(workload, clients)
    if t is None:
        return "none"
    ratio, p99 = t
    return f">= {ratio:g}x" + (", p99 <= etcd" if p99 else "")


def verdict(workload: str, etcd: dict[str, Any] | None, ours: dict[str, Any] | None) -> str:
    """ "met" / "NOT met" against the row's target; "-" without both systems or a target."""
    if not etcd or not ours or etcd["throughput"] <= 0:
        return "-"
    t = target(workload, ours["clients"])
    if t is None:
        return "-"
    ratio, p99 = t
    ok = ours["throughput"] / etcd["throughput"] >= ratio
    if p99:
        ok = ok and ours["p99_ms"] <= etcd["p99_ms"]
    return "met" if ok else "NOT met"


def paxos_verdict(raft: dict[str, Any] | None, paxos: dict[str, Any] | None) -> str:
    """Paxos within PAXOS_WITHIN of Raft's throughput on the same point."""
    if not raft or not paxos or raft["throughput"] <= 0:
        return "-"
    return "met" if paxos["throughput"] >= (1 - PAXOS_WITHIN) * raft["throughput"] else "NOT met"


def table(rows: list[dict[str, Any]], workloads: list[Workload], clients: list[int]) -> str:
    """A Markdown table: etcd and kvstore (Raft) per point, the ratios, the issue's target
    and whether it is met, ops per leader CPU-second of both, and Paxos against Raft."""
    by = {(r["system"], r["workload"], r["clients"]): r for r in rows}
    head = (
        "| workload | clients | etcd ops/s | etcd p50 ms | etcd p99 ms "
        "| kvstore ops/s | kvstore p50 ms | kvstore p99 ms | throughput ratio | p99 ratio "
        "| target | met | etcd ops/leader-CPU-s | kvstore ops/leader-CPU-s "
        "| paxos ops/s | paxos p99 ms | paxos/raft | paxos within 10% |"
    )
    lines = [head, "|" + "---|" * 18]

    def cell(r: dict[str, Any] | None, f: str, fmt: str) -> str:
        return format(r[f], fmt) if r and r.get(f) is not None else "-"

    for wl in workloads:
        for n in clients:
            e, k = by.get(("etcd", wl.name, n)), by.get(("kvstore", wl.name, n))
            px = by.get(("kvstore-paxos", wl.name, n))
            ratio = (
                f"{k['throughput'] / e['throughput']:.2f}x"
                if e and k and e["throughput"] > 0
                else "-"
            )
            p99 = f"{k['p99_ms'] / e['p99_ms']:.2f}" if e and k and e["p99_ms"] > 0 else "-"
            pr = (
                f"{px['throughput'] / k['throughput']:.2f}"
                if px and k and k["throughput"] > 0
                else "-"
            )
            lines.append(
                f"| {wl.name} | {n} | {cell(e, 'throughput', ',.0f')} | {cell(e, 'p50_ms', '.2f')}"
                f" | {cell(e, 'p99_ms', '.2f')} | {cell(k, 'throughput', ',.0f')}"
                f" | {cell(k, 'p50_ms', '.2f')} | {cell(k, 'p99_ms', '.2f')} | {ratio} | {p99}"
                f" | {target_text(wl.name, n)} | {verdict(wl.name, e, k)}"
                f" | {cell(e, 'ops_per_leader_cpu_s', ',.0f')}"
                f" | {cell(k, 'ops_per_leader_cpu_s', ',.0f')}"
                f" | {cell(px, 'throughput', ',.0f')} | {cell(px, 'p99_ms', '.2f')} | {pr}"
                f" | {paxos_verdict(k, px)} |"
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
        for system, style in (("etcd", "s--"), ("kvstore", "o-"), ("kvstore-paxos", "^:")):
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
    fig.suptitle("kvstore (Raft, Paxos) vs etcd 3.4: 3 nodes on loopback, fsync on, 256 B values")
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
        clusters: dict[str, Cluster] = {}
        for system in systems:
            if system == "etcd":
                etcd = stack.enter_context(EtcdCluster(out / "etcd-data"))
                versions["etcd"] = etcd_version(etcd.binary)
                log(f"== etcd {versions['etcd']} up at {','.join(etcd.endpoints)}")
                clusters["etcd"] = _Running(etcd, etcd.group.pids)
            else:
                paxos = system == "kvstore-paxos"
                kv = stack.enter_context(
                    KvstoreCluster(
                        out / f"{system}-data",
                        base_port=47400 if paxos else 47000,
                        extra_args=[
                            *args.kvstore_args.split(),
                            f"--consensus={'paxos' if paxos else 'raft'}",
                        ],
                    )
                )
                log(f"== {system} up at {','.join(kv.endpoints)}")
                clusters[system] = _Running(kv, kv.group.pids)
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


class _Running:
    """A started cluster as a point sees it (Cluster)."""

    def __init__(self, cluster: EtcdCluster | KvstoreCluster, pids: Callable[[], list[int]]):
        self._cluster = cluster
        self.pids = pids

    @property
    def endpoints(self) -> list[str]:
        return self._cluster.endpoints

    def leader_pid(self) -> int | None:
        return self._cluster.leader_pid()


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
