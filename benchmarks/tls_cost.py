#!/usr/bin/env python3
"""The cost of TLS (issue 14): the same load against a plaintext and a mutual-TLS cluster.

    python benchmarks/tls_cost.py [--reps 3] [--duration 10] [--clients 64] [--out DIR]

Starts two local 3-node clusters side by side (`kvstore cluster`, the second with
`--tls`), and two 3-member etcd clusters (plaintext, and mutual TLS for clients and
peers with etcd's own flags and `kvstore certs init` certificates), and runs `kvstore
bench` against each in turn (writes, then strong reads), so a busy machine's drift hits
all alike. Reports throughput, p99 and the nodes' CPU time
per operation (user + system of the three node processes, from /proc): on a shared
machine throughput moves with the neighbours, CPU per operation much less.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _cpu(pids: list[int]) -> float:
    total = 0
    for p in pids:
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _node_pids(data_dir: str) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-f", f"data-dir {data_dir}/node"], capture_output=True, text=True
    ).stdout
    return [int(x) for x in out.split()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--port", type=int, default=17621, help="plaintext PORT.., TLS PORT+10..")
    ap.add_argument("--systems", default="kvstore,etcd", help="kvstore,etcd or one of them")
    ap.add_argument("--etcd-port", type=int, default=18600, help="etcd plain PORT, TLS PORT+200")
    ap.add_argument("--out", default=None, help="data directory (default: a temporary one)")
    args = ap.parse_args()
    systems = [s for s in args.systems.split(",") if s]
    root = args.out or tempfile.mkdtemp(prefix="kvstore-tls-cost-")
    py = [sys.executable, "-m", "kvstore.cli"]
    modes = {"plain": args.port, "tls": args.port + 10}
    procs = {}
    # (system, mode) -> endpoints, node pids, bench --target, extra bench flags
    runs: dict[tuple[str, str], tuple[str, Callable[[], list[int]], str, list[str]]] = {}
    stack = contextlib.ExitStack()
    if "kvstore" in systems:
        for mode, port in modes.items():
            argv = [*py, "cluster", "--port", str(port), "--data-dir", f"{root}/{mode}"]
            argv += ["--tls"] if mode == "tls" else []
            log = open(f"{root}-{mode}.out", "w")  # noqa: SIM115 - the child owns it
            procs[mode] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
            len(_node_pids(f"{root}/{mode}")) < 3 for mode in modes
        ):
            time.sleep(0.5)
        time.sleep(5)  # elections
        certs = f"{root}/tls/certs"
        for mode, port in modes.items():
            eps = ",".join(f"127.0.0.1:{port + i}" for i in range(3))
            flags = ["--cacert", f"{certs}/ca.pem", "--cert", f"{certs}/client.pem"]
            flags += ["--key", f"{certs}/client-key.pem"]
            pids = functools.partial(_node_pids, f"{root}/{mode}")
            runs["kvstore", mode] = (eps, pids, "kvstore", flags if mode == "tls" else [])
    if "etcd" in systems:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from clusters import EtcdCluster

        ecerts = Path(root) / "etcd-certs"
        subprocess.run([*py, "certs", "init", str(ecerts), "--nodes", "3"], check=True,
                       capture_output=True)  # fmt: skip
        for mode, base in (("plain", args.etcd_port), ("tls", args.etcd_port + 200)):
            cluster = EtcdCluster(
                Path(root) / f"etcd-{mode}", base, certs=ecerts if mode == "tls" else None
            )
            stack.enter_context(cluster)
            flags = ["--cacert", f"{ecerts}/ca.pem", "--cert", f"{ecerts}/client.pem"]
            flags += ["--key", f"{ecerts}/client-key.pem"]
            runs["etcd", mode] = (
                ",".join(cluster.endpoints),
                cluster.group.pids,
                "etcd",
                flags if mode == "tls" else [],
            )
    rows: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    try:
        for rep in range(args.reps):
            for workload in ("writes", "strong reads"):
                for (system, mode), (eps, pid_fn, target, flags) in runs.items():
                    argv = [*py, "bench", "--endpoints", eps, "--clients", str(args.clients)]
                    argv += ["--duration", str(args.duration), "--quiet", "--no-preload"]
                    argv += ["--target", target]
                    if workload != "writes":
                        argv += ["--read-ratio", "1", "--read-mode", "strong"]
                    argv += flags
                    pids = pid_fn()
                    before = _cpu(pids)
                    r = subprocess.run(argv, capture_output=True, text=True)
                    cpu = _cpu(pids) - before
                    m = re.search(r"\(([\d,]+) ops in ([\d.]+)s", r.stdout)
                    p99 = re.search(r"p99 ([\d.]+) ms", r.stdout)
                    if m is None or p99 is None:
                        print(f"bench failed: {r.stdout[-300:]} {r.stderr[-500:]}", file=sys.stderr)
                        return 1
                    ops = int(m.group(1).replace(",", ""))
                    row = (ops / float(m.group(2)), float(p99.group(1)), cpu / ops * 1e6)
                    rows.setdefault((system, workload, mode), []).append(row)
                    print(
                        f"{system:7s} {workload:13s} {mode:5s} rep{rep}  {row[0]:8.0f} ops/s  "
                        f"p99 {row[1]:7.1f} ms  node CPU {row[2]:6.0f} us/op",
                        flush=True,
                    )
    finally:
        stack.close()
        for p in procs.values():
            p.send_signal(signal.SIGINT)
        for p in procs.values():
            p.wait(timeout=30)
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nmedians of {args.reps} ({args.clients} clients, {args.duration:.0f} s each):")
    print("| system | workload | mode | ops/s | p99 ms | node CPU us/op |")
    print("|---|---|---|---|---|---|")
    for (system, workload, mode), rs in rows.items():
        med = [statistics.median(x[i] for x in rs) for i in range(3)]
        print(f"| {system} | {workload} | {mode} | {med[0]:,.0f} | {med[1]:.0f} | {med[2]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
