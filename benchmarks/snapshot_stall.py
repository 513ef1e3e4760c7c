#!/usr/bin/env python3
"""Does sending a big snapshot stall the leader? (issue 11 point 3)

    python benchmarks/snapshot_stall.py [--mib 120] [--value-kib 256] [--tree DIR]

Starts 3 real nodes on loopback, stops one follower, loads ~MIB MiB into the store and
writes on until the leader has compacted its log past the stopped follower, restarts it
and lets the leader catch it up by snapshot. Each node runs under this script (``node``
mode), which stamps every batch the leader's transport writes to each peer: the largest
gap between two batches to the HEALTHY follower while the snapshot is being sent is the
leader's heartbeat gap (heartbeats go out every tick; a blocked event loop sends
nothing). Also reported: time from the follower's restart until it has caught up,
elections (term changes) meanwhile, and the leader's own log of the transfer.
``--tree DIR`` runs another checkout's kvstore (before/after comparisons).

Rule this module keeps: the probe changes no behaviour of the node (it wraps one
transport method from the outside and swallows its own errors).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


def node_main(argv: list[str]) -> None:
    """Run `kvstore serve` with the batch-stamping probe."""
    sys.path.insert(0, os.environ.get("KVSTORE_TREE") or str(HERE.parent.parent))
    from kvstore.node import transport

    out = os.environ["STALL_OUT"]
    gaps: list[tuple[float, int, float]] = []
    last: dict[int, float] = {}
    lock = threading.Lock()
    orig = transport._Link._batch

    def batch(self: Any, msgs: Any) -> Any:
        with contextlib.suppress(Exception):
            now = time.time()
            prev = last.get(self.peer_id)
            last[self.peer_id] = now
            if prev is not None and now - prev > 0.02:
                with lock:
                    gaps.append((now, self.peer_id, now - prev))
        return orig(self, msgs)

    transport._Link._batch = batch  # type: ignore[method-assign]

    def dump() -> None:
        while True:
            time.sleep(0.5)
            with lock, contextlib.suppress(Exception):
                Path(out + ".tmp").write_text(json.dumps(gaps))
                os.replace(out + ".tmp", out)

    threading.Thread(target=dump, daemon=True).start()
    from kvstore.cli import main

    sys.exit(main(argv))


def _free_ports(n: int) -> list[int]:
    import random
    import socket

    out: list[int] = []
    while len(out) < n:
        p = random.randint(17000, 17999)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
        if p not in out:
            out.append(p)
    return out


class Cluster:
    def __init__(self, root: Path, tree: str, tick_ms: int) -> None:
        self.root = root
        self.tree = tree
        self.tick_ms = tick_ms
        self.ports = dict(enumerate(_free_ports(3), start=1))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def ep(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[i]}"

    def start(self, i: int) -> None:
        peers = ",".join(f"{j}={self.ep(j)}" for j in self.ports)
        argv = [sys.executable, str(HERE), "node", "serve", "--id", str(i)]
        argv += ["--listen", self.ep(i), "--peers", peers, "--data-dir", str(self.root / f"n{i}")]
        argv += ["--snapshot-entries", "200", "--map-size-mb", "4096"]
        argv += ["--tick-ms", str(self.tick_ms)]
        env = {**os.environ, "STALL_OUT": str(self.root / f"gaps{i}.json")}
        if self.tree:
            env["KVSTORE_TREE"] = self.tree
            env["PYTHONPATH"] = self.tree
        with open(self.root / f"node{i}.log", "ab") as log:
            self.procs[i] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def stop(self, i: int) -> None:
        p = self.procs.pop(i)
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def close(self) -> None:
        for i in list(self.procs):
            self.procs[i].kill()
            self.procs.pop(i).wait()

    def gaps(self, i: int) -> list[tuple[float, int, float]]:
        with contextlib.suppress(OSError, ValueError):
            return [tuple(g) for g in json.loads((self.root / f"gaps{i}.json").read_text())]  # type: ignore[misc]
        return []


async def status(c: Cluster, i: int) -> dict[str, Any]:
    from kvstore.client import AsyncClient

    async with AsyncClient([c.ep(i)], timeout=2) as cl:
        st: dict[str, Any] = (await cl.status())[0]
        return st


async def leader(c: Cluster, among: list[int]) -> tuple[int, int]:
    """(leader id, term), waiting for one."""
    for _ in range(400):
        for i in among:
            with contextlib.suppress(Exception):
                st = await status(c, i)
                for g in st.get("groups", []):
                    if g["role"] == "leader":
                        return i, int(g["term"])
        await asyncio.sleep(0.05)
    raise RuntimeError("no leader")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from kvstore.client import AsyncClient

    root = Path(tempfile.mkdtemp(prefix="snapstall-", dir=args.dir))
    c = Cluster(root, args.tree, args.tick_ms)
    try:
        for i in (1, 2, 3):
            c.start(i)
        lead, _ = await leader(c, [1, 2, 3])
        lagging = next(i for i in (1, 2, 3) if i != lead)
        healthy = next(i for i in (1, 2, 3) if i not in (lead, lagging))
        c.stop(lagging)
        eps = [c.ep(lead), c.ep(healthy)]
        value = os.urandom(args.value_kib << 10)
        n = (args.mib << 10) // args.value_kib
        t0 = time.monotonic()
        async with AsyncClient(eps, timeout=30) as cl:
            sem = asyncio.Semaphore(8)

            async def put(k: int) -> None:
                async with sem:
                    await cl.put(f"big{k:06}", value)

            await asyncio.gather(*(put(k) for k in range(n)))
            for k in range(600):  # past --snapshot-entries: the leader compacts
                await cl.put(f"small{k}", "x")
        load_s = time.monotonic() - t0
        lead, term1 = await leader(c, [1, 2, 3])
        st = await status(c, lead)
        target = st["groups"][0]["applied"]
        t_quiet = time.time()
        await asyncio.sleep(args.baseline)  # idle: the machine's own noise, for reference
        t_restart = time.time()
        c.start(lagging)
        t1 = time.monotonic()
        caught = 0.0
        while time.monotonic() - t1 < args.timeout:
            with contextlib.suppress(Exception):
                s = await status(c, lagging)
                if s["groups"] and s["groups"][0]["applied"] >= target:
                    caught = time.monotonic() - t1
                    break
            await asyncio.sleep(0.05)
        t_done = time.time()
        await asyncio.sleep(1.0)  # the probe dumps every 0.5 s
        _, term2 = await leader(c, [1, 2, 3])
        gaps = [g for g in c.gaps(lead) if g[1] == healthy and t_restart <= g[0] <= t_done + 0.5]
        gap_max = max((g[2] for g in gaps), default=0.0)
        quiet = [g[2] for g in c.gaps(lead) if g[1] == healthy and t_quiet <= g[0] < t_restart]
        log = (root / f"node{lead}.log").read_text(errors="replace")
        transfer = [line for line in log.splitlines() if "event=snapshot_" in line]
        return {
            "tree": args.tree or str(HERE.parent.parent),
            "store_mib_loaded": round(n * args.value_kib / 1024, 1),
            "load_seconds": round(load_s, 1),
            "catch_up_seconds": round(caught, 2) if caught else f"not within {args.timeout}s",
            "leader_max_heartbeat_gap_ms": round(gap_max * 1000, 1),
            "gaps_over_100ms": sum(1 for g in gaps if g[2] > 0.1),
            "idle_baseline": {
                "seconds": args.baseline,
                "max_gap_ms": round(max(quiet, default=0.0) * 1000, 1),
                "gaps_over_100ms": sum(1 for g in quiet if g > 0.1),
            },
            "elections_during_catch_up": term2 - term1,
            "tick_ms": args.tick_ms,
            "largest_gaps": [
                f"{g[2] * 1000:.0f} ms at +{g[0] - t_restart:.1f} s"
                for g in sorted(gaps, key=lambda g: -g[2])[:6]
            ],
            "leader_log": transfer[-6:],
        }
    finally:
        c.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "node":
        node_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=120)
    ap.add_argument("--value-kib", type=int, default=256)
    ap.add_argument("--tick-ms", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--baseline", type=float, default=10.0, help="idle seconds measured first")
    ap.add_argument("--tree", default="", help="another checkout's root (before/after)")
    ap.add_argument("--dir", default=None, help="where the data directories go")
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    args = ap.parse_args()
    sys.path.insert(0, args.tree or str(HERE.parent.parent))
    print(json.dumps(asyncio.run(run(args)), indent=1))


if __name__ == "__main__":
    main()
