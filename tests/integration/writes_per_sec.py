"""Quick writes/s measurement: a fresh local 3-node cluster, C concurrent writers on one
AsyncClient (multiplexed over one Batch stream), D seconds, 256-byte values.

    python tests/integration/writes_per_sec.py [--clients 64] [--duration 5] [--consensus raft]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import running_cluster

from kvstore.client import AsyncClient


async def load(endpoints: list[str], clients: int, duration: float, read_mode: str | None) -> None:
    value = os.urandom(128).hex().encode()
    lat: list[float] = []
    async with AsyncClient(endpoints, timeout=10.0) as c:
        await c.put(b"warmup", value)
        stop = time.perf_counter() + duration

        async def worker(w: int) -> None:
            i = 0
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                if read_mode:
                    await c.get(f"k{w}-{i % 100}".encode(), read_mode=read_mode)
                else:
                    await c.put(f"k{w}-{i % 100}".encode(), value)
                lat.append(time.perf_counter() - t0)
                i += 1

        t0 = time.perf_counter()
        cpu0 = time.process_time()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    lat.sort()
    what = f"{read_mode} reads" if read_mode else "writes"
    print(
        f"{clients} clients: {len(lat) / elapsed:,.0f} {what}/s  "
        f"p50 {lat[len(lat) // 2] * 1000:.1f} ms  p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms  "
        f"(client CPU {cpu / elapsed:.0%})"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--consensus", default="raft")
    ap.add_argument("--read-mode", default=None)
    args = ap.parse_args()
    with (
        tempfile.TemporaryDirectory() as d,
        running_cluster(Path(d), consensus=args.consensus) as cl,
    ):
        cl.wait_leader()
        for n in args.clients:
            asyncio.run(load(cl.endpoints, n, args.duration, args.read_mode))


if __name__ == "__main__":
    main()
