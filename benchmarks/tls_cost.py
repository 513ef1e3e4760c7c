#!/usr/bin/env python3
"""The cost of TLS (issue 14): the same load against a plaintext and a mutual-TLS cluster.

    python benchmarks/tls_cost.py [--reps 3] [--duration 10] [--clients 64] [--out DIR]

Starts two local 3-node clusters side by side (`kvstore cluster`, the second with
`--tls`) and runs `kvstore bench` against each in turn (writes, then strong reads), so a
busy machine's drift hits both alike. Reports throughput, p99 and the nodes' CPU time
per operation (user + system of the three node processes, from /proc): on a shared
machine throughput moves with the neighbours, CPU per operation much less.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time


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
    ap.add_argument("--out", default=None, help="data directory (default: a temporary one)")
    args = ap.parse_args()
    root = args.out or tempfile.mkdtemp(prefix="kvstore-tls-cost-")
    py = [sys.executable, "-m", "kvstore.cli"]
    modes = {"plain": args.port, "tls": args.port + 10}
    procs = {}
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
    tls_flags = ["--cacert", f"{certs}/ca.pem", "--cert", f"{certs}/client.pem"]
    tls_flags += ["--key", f"{certs}/client-key.pem"]
    rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    try:
        for rep in range(args.reps):
            for workload in ("writes", "strong reads"):
                for mode, port in modes.items():
                    eps = ",".join(f"127.0.0.1:{port + i}" for i in range(3))
                    argv = [*py, "bench", "--endpoints", eps, "--clients", str(args.clients)]
                    argv += ["--duration", str(args.duration), "--quiet", "--no-preload"]
                    if workload != "writes":
                        argv += ["--read-ratio", "1", "--read-mode", "strong"]
                    argv += tls_flags if mode == "tls" else []
                    pids = _node_pids(f"{root}/{mode}")
                    before = _cpu(pids)
                    r = subprocess.run(argv, capture_output=True, text=True)
                    cpu = _cpu(pids) - before
                    m = re.search(r"\(([\d,]+) ops in ([\d.]+)s", r.stdout)
                    p99 = re.search(r"p99 ([\d.]+) ms", r.stdout)
                    if m is None or p99 is None:
                        print(f"bench failed: {r.stderr[-500:]}", file=sys.stderr)
                        return 1
                    ops = int(m.group(1).replace(",", ""))
                    row = (ops / float(m.group(2)), float(p99.group(1)), cpu / ops * 1e6)
                    rows.setdefault((workload, mode), []).append(row)
                    print(
                        f"{workload:13s} {mode:5s} rep{rep}  {row[0]:8.0f} ops/s  "
                        f"p99 {row[1]:7.1f} ms  node CPU {row[2]:6.0f} us/op",
                        flush=True,
                    )
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGINT)
        for p in procs.values():
            p.wait(timeout=30)
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nmedians of {args.reps} ({args.clients} clients, {args.duration:.0f} s each):")
    print("| workload | mode | ops/s | p99 ms | node CPU us/op |\n|---|---|---|---|---|")
    for (workload, mode), rs in rows.items():
        med = [statistics.median(x[i] for x in rs) for i in range(3)]
        print(f"| {workload} | {mode} | {med[0]:,.0f} | {med[1]:.0f} | {med[2]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
