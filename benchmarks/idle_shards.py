#!/usr/bin/env python3
"""CPU of idle shards: what a node spends on groups that serve nothing (issue 12: "an idle
group must not cost heartbeats or CPU like a busy one").

    nice -n 10 python benchmarks/idle_shards.py                   # 3 nodes, 64 shards, raft
    nice -n 10 python benchmarks/idle_shards.py --consensus paxos --shards 64

Starts a fresh cluster on loopback (``serve --shards K``, 3 replicas each, every node
holding a replica of every shard), writes one key in every shard (retried until all
land), waits until no group's leader changed for ``--settle`` seconds, then reads each
node process's CPU (user + system, /proc) over ``--seconds`` with no traffic, and the
consensus messages each node sent meanwhile (its metrics). Prints one line per node and
the mean.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from kvstore.client import KVError  # noqa: E402
from tests.integration.harness import LocalCluster, wait_for  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def sent(c: LocalCluster, i: int) -> float:
    """Consensus messages node ``i`` has sent (kvstore_messages_sent_total, all groups)."""
    total = 0.0
    for line in c.metrics(i).splitlines():
        m = re.match(r"kvstore_messages_sent_total(\{[^}]*\})? ([0-9.e+]+)", line)
        if m:
            total += float(m.group(2))
    return total


def leaders(c: LocalCluster) -> dict[int, int]:
    """Group -> the node that leads it (groups with no leader now: left out)."""
    return {
        g["group"]: n["id"]
        for n in c.status(timeout=5)
        if n["reachable"]
        for g in n.get("groups", [])
        if g["role"] == "leader"
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--shards", type=int, default=64)
    p.add_argument("--consensus", default="raft", choices=("raft", "paxos"))
    p.add_argument("--settle", type=float, default=20.0, help="seconds with no leader change first")
    p.add_argument("--seconds", type=float, default=20.0)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="idle-shards-") as tmp:
        c = LocalCluster(
            Path(tmp),
            nodes=a.nodes,
            consensus=a.consensus,
            extra=["--shards", str(a.shards)],
            metrics=True,
        )
        try:
            c.start()

            def write_each() -> bool:
                # Elections may still churn on a loaded machine: retry until every write lands.
                try:
                    with c.client(timeout=30) as kv:
                        for s in kv.shards():
                            kv.put(s["start"] + "\x00", "v")  # inside the shard
                except KVError as e:
                    print(f"  (writes retried: {e})", file=sys.stderr)
                    return False
                return True

            wait_for(write_each, 900, "a write in every shard", interval=2.0)
            # Settled: leaders unchanged for --settle seconds (placement balances
            # leadership for a while after start; those transfers are not idle traffic).
            last, since = None, time.monotonic()
            while time.monotonic() - since < a.settle:
                now = leaders(c)
                if now != last:
                    last, since = now, time.monotonic()
                time.sleep(2.0)
            pids = {i: p.pid for i, p in c.procs.items()}
            before = {i: (cpu_s(pid), sent(c, i)) for i, pid in pids.items()}
            t0 = time.monotonic()
            time.sleep(a.seconds)
            took = time.monotonic() - t0
            after = {i: (cpu_s(pid), sent(c, i)) for i, pid in pids.items()}
            load = os.getloadavg()[0]
            cpus = []
            print(
                f"{a.nodes} nodes, {a.shards} shards ({a.consensus}), idle {took:.0f} s, "
                f"load {load:.1f}"
            )
            for i in sorted(pids):
                cpu = 100 * (after[i][0] - before[i][0]) / took
                msgs = (after[i][1] - before[i][1]) / took
                cpus.append(cpu)
                print(f"  node {i}: {cpu:5.1f}% CPU, {msgs:7.1f} peer messages/s")
            print(f"  mean: {sum(cpus) / len(cpus):5.1f}% CPU per node")
        finally:
            c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
