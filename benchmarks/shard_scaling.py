#!/usr/bin/env python3
"""Write throughput with 1 shard vs 3 shards, on 3 and on 5 nodes (issue 12's benchmark).

    nice -n 10 python benchmarks/shard_scaling.py           # 256 clients, 10 s per point
    nice -n 10 python benchmarks/shard_scaling.py --quick   # 5 s per point

Configurations, each a fresh cluster on loopback (ports 47001-...; data on disk, fsync on):
- ``unsharded``: 3 nodes, no ``--shards`` (one group, as before sharding): the baseline
  that 1 shard must not regress against;
- ``1 shard`` and ``3 shards`` on 3 nodes and on 5 nodes (``serve --shards K``, split keys
  at the thirds of the benchmark's key space so the writes spread evenly). With 3 shards
  the script transfers shard i's leadership to node i first, so the three leaders sit on
  three different nodes, and checks they are still there after the run.
The closed-loop generator (kvstore.bench.runner: async Python clients in ``--processes``
load processes) writes 256-byte values over 1,000 keys. Every point records the CPU each
node process and the generator used (from /proc), each node's persist transactions (one
fsync each) per second and the share of the run spent in them (from its metrics), and
the machine's load average, to say where the scaling stops. Writes
bench-out/shard_scaling/{results.json, table.md, scaling.png}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from clusters import KvstoreCluster  # noqa: E402

from kvstore.bench.cli import progress_printer  # noqa: E402
from kvstore.bench.report import write_json  # noqa: E402
from kvstore.bench.runner import run  # noqa: E402
from kvstore.bench.workload import WorkloadSpec, key_name  # noqa: E402

CONFIGS = [
    ("unsharded", 3, 0),
    ("1 shard", 3, 1),
    ("3 shards", 3, 3),
    ("1 shard", 5, 1),
    ("3 shards", 5, 3),
]
TICKS = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5 s per point")
    p.add_argument("--clients", type=int, default=256)
    p.add_argument("--duration", type=float, default=None, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--processes", type=int, default=2, help="load processes (default 2)")
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--value-size", type=int, default=256)
    p.add_argument("--consensus", choices=("raft", "paxos"), default="raft")
    p.add_argument("--out", default=str(ROOT / "bench-out" / "shard_scaling"))
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 5.0 if args.quick else 10.0
    return args


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (and its reaped children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / TICKS


def persist_totals(ports: list[int]) -> list[tuple[float, float]]:
    """(transactions, seconds) each node has spent persisting (one fsync each), from its
    ``kvstore_persist_seconds`` histogram; (0, 0) when the metrics cannot be read."""
    import urllib.request

    out = []
    for port in ports:
        count = total = 0.0
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            out.append((0.0, 0.0))
            continue
        for line in text.splitlines():
            if line.startswith("kvstore_persist_seconds_count"):
                count += float(line.rsplit(" ", 1)[1])
            elif line.startswith("kvstore_persist_seconds_sum"):
                total += float(line.rsplit(" ", 1)[1])
        out.append((count, total))
    return out


def shard_leaders(endpoints: list[str]) -> dict[int, int]:
    from kvstore.client import Client

    with Client(endpoints, timeout=10) as c:
        return {r["id"]: r["leader"] for r in c.shards()}


def place_leaders(endpoints: list[str], shards: int) -> dict[int, int]:
    """Shard i's leadership to node i (a voter of it by the initial layout)."""
    from kvstore.client import AsyncClient
    from kvstore.client._nodes import transfer_shard_leader

    async def go() -> None:
        async with AsyncClient(endpoints, timeout=15) as c:
            for shard in range(1, shards + 1):
                for _ in range(5):  # a transfer may lose its election on a busy machine
                    try:
                        if await transfer_shard_leader(c, shard, shard) == shard:
                            break
                    except Exception as e:  # retried; the check below says if it worked
                        log(f"   transfer of shard {shard} to node {shard}: {e}")
                    await asyncio.sleep(1.0)

    asyncio.run(go())
    return shard_leaders(endpoints)


def run_config(name: str, nodes: int, shards: int, args: argparse.Namespace) -> dict[str, Any]:
    extra = ["--consensus", args.consensus]
    if shards:
        cuts = [key_name(args.keys * i // shards).decode() for i in range(1, shards)]
        extra += ["--shards", str(shards), "--split-size", "0", "--split-key-count", "0"]
        if cuts:
            extra += ["--split-keys", ",".join(cuts)]
    data = Path(args.out) / "data"
    with KvstoreCluster(data, members=nodes, extra_args=extra) as kv:
        leaders: dict[int, int] = {}
        if shards:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                leaders = shard_leaders(kv.endpoints)
                if len(leaders) == shards and all(leaders.values()):
                    break
                time.sleep(0.5)
            if shards > 1:
                leaders = place_leaders(kv.endpoints, shards)
        log(f"== {name}, {nodes} nodes: leaders {leaders or '-'}")
        spec = WorkloadSpec(
            clients=args.clients,
            duration_s=args.duration,
            warmup_s=args.warmup,
            value_size=args.value_size,
            keys=args.keys,
            read_ratio=0.0,
            read_mode="strong",
        ).validate()
        pids = kv.group.pids()
        cpu0 = [cpu_seconds(p) for p in pids]
        fsync0 = persist_totals(kv.metrics_ports)
        load0 = os.getloadavg()[0]
        t0 = time.monotonic()
        result = run(
            "kvstore",
            kv.endpoints,
            spec,
            processes=args.processes,
            progress=progress_printer(name, spec.warmup_s + spec.duration_s),
        )
        wall = time.monotonic() - t0
        cpu = [(cpu_seconds(p) - c) / wall for p, c in zip(pids, cpu0, strict=True)]
        fsync = [
            ((n1 - n0) / wall, (t1 - t0) / wall)
            for (n0, t0), (n1, t1) in zip(fsync0, persist_totals(kv.metrics_ports), strict=True)
        ]
        after = shard_leaders(kv.endpoints) if shards else {}
    s = result.summary()
    row = {
        "config": name,
        "nodes": nodes,
        "shards": shards,
        **{k: s[k] for k in ("throughput", "p50_ms", "p99_ms", "errors", "load_cores")},
        "node_cores": [round(c, 2) for c in cpu],
        "fsyncs_per_s": [round(n, 1) for n, _ in fsync],
        "fsync_busy": [round(b, 2) for _, b in fsync],
        "leaders_before": leaders,
        "leaders_after": after,
        "loadavg_before": load0,
        "loadavg_after": os.getloadavg()[0],
    }
    log(
        f"   {name} on {nodes} nodes: {s['throughput']:,.0f} writes/s, p50 {s['p50_ms']:.1f} ms, "
        f"p99 {s['p99_ms']:.1f} ms, errors {s['errors']}, nodes {sum(cpu):.2f} cores "
        f"({', '.join(f'{c:.2f}' for c in cpu)}), generator {s['load_cores']:.2f} cores, "
        f"fsyncs/s {', '.join(f'{n:.0f}' for n, _ in fsync)} "
        f"(busy {', '.join(f'{b:.0%}' for _, b in fsync)}), "
        f"load {load0:.1f} -> {row['loadavg_after']:.1f}"
    )
    return row


def table(rows: list[dict[str, Any]]) -> str:
    base = {r["nodes"]: r["throughput"] for r in rows if r["shards"] == 1}
    lines = [
        "| config | nodes | writes/s | vs 1 shard | p50 ms | p99 ms | errors | node cores "
        "(sum: per node) | fsyncs/s per node (time in fsync) | generator cores | leaders "
        "| load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        one = base.get(r["nodes"])
        ratio = f"{r['throughput'] / one:.2f}x" if one and r["shards"] else "-"
        leaders = ",".join(f"{s}@{n}" for s, n in sorted(r["leaders_after"].items())) or "-"
        cores = f"{sum(r['node_cores']):.2f}: " + " ".join(f"{c:.2f}" for c in r["node_cores"])
        fs = " ".join(
            f"{n:.0f} ({b:.0%})" for n, b in zip(r["fsyncs_per_s"], r["fsync_busy"], strict=True)
        )
        lines.append(
            f"| {r['config']} | {r['nodes']} | {r['throughput']:,.0f} | {ratio} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {cores} | {fs} | "
            f"{r['load_cores']:.2f} | {leaders} | {r['loadavg_before']:.1f} -> "
            f"{r['loadavg_after']:.1f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], clients: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = [f"{r['config']}\n{r['nodes']} nodes" for r in rows]
    bars = ax.bar(labels, [r["throughput"] for r in rows], color="tab:blue")
    for b, r in zip(bars, rows, strict=True):
        ax.annotate(
            f"{r['throughput']:,.0f}\np99 {r['p99_ms']:.0f} ms",
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("writes/s")
    ax.set_ylim(top=max(r["throughput"] for r in rows) * 1.25)
    ax.set_title(f"kvstore writes at {clients} clients: shards vs nodes (loopback, fsync on)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    uptime = Path("/proc/loadavg").read_text().strip()
    log(f"== machine: {len(os.sched_getaffinity(0))} cpus, /proc/loadavg {uptime}")
    rows = [run_config(name, nodes, shards, args) for name, nodes, shards in CONFIGS]
    md = table(rows)
    print(md)
    (out / "table.md").write_text(md + "\n")
    write_json(
        out / "results.json",
        {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "elapsed_s": round(time.time() - started, 1),
            "machine": {
                "cpus": len(os.sched_getaffinity(0)),
                "python": platform.python_version(),
                "loadavg_at_start": uptime,
                "loadavg_at_end": os.getloadavg(),
            },
            "options": vars(args),
            "rows": rows,
        },
    )
    plot(rows, args.clients, out / "scaling.png")
    log(f"== wrote {out / 'table.md'}, {out / 'results.json'}, {out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
