#!/usr/bin/env python3
"""Watch fan-out (issue 16's benchmark): events per second delivered to 100 watchers
while writes run, and what having them costs the writes.

    nice -n 10 python benchmarks/watch_fanout.py              # 100 watchers, 10 s per phase
    nice -n 10 python benchmarks/watch_fanout.py --quick      # 5 s per phase

One fresh 3-node cluster (Raft, fsync on, loopback, ports 47301-47303). Phase 1: the
closed-loop writers (``--writers`` concurrent puts of 256-byte values over 1,000 keys
under ``bench/``) run alone. Phase 2: ``--watchers`` watchers of the prefix ``bench/``
(spread over ``--watcher-procs`` processes, each one AsyncClient, streams spread over the
three nodes as the client picks them) are started, then the same writers run again.
Reported: write ops/s of each phase (the cost is the difference), events/s delivered to
all watchers during the write window, how long after the last write every watcher had
every event (drain), and a check that every watcher got the same number of events
with no revision going back. Writes bench-out/watch_fanout/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from clusters import KvstoreCluster  # noqa: E402

from kvstore.client import AsyncClient, WatchEvent  # noqa: E402

VALUE = b"v" * 256


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def write_for(endpoints: list[str], writers: int, seconds: float) -> tuple[int, int]:
    """(writes acknowledged, last revision) of ``writers`` closed-loop writers."""
    done = 0
    last = 0
    stop = time.monotonic() + seconds
    async with AsyncClient(endpoints, timeout=10) as c:

        async def one(i: int) -> None:
            nonlocal done, last
            n = 0
            while time.monotonic() < stop:
                rev = await c.put(b"bench/k%03d" % ((i * 7919 + n) % 1000), VALUE)
                n += 1
                done += 1
                last = max(last, rev)

        await asyncio.gather(*(one(i) for i in range(writers)))
    return done, last


async def child(endpoints: list[str], watchers: int, index: int) -> None:
    """A watcher process: ``watchers`` watches of bench/, counts; reads commands on stdin:
    "start" (count from now), "stop REV" (wait until every watcher reached REV, report)."""
    counts = [0] * watchers
    in_window = [0] * watchers
    last_rev = [0] * watchers
    backwards = 0
    reached_at: list[float | None] = [None] * watchers
    window = {"open": False, "until": 1 << 62}
    async with AsyncClient(endpoints, timeout=10) as c:
        ws = []
        for i in range(watchers):
            w = c.watch(b"bench/", prefix=True)
            # Spread the streams: each watcher starts its list of endpoints elsewhere.
            ws.append(w)

        async def run(i: int) -> None:
            nonlocal backwards
            async for ev in ws[i]:
                if isinstance(ev, WatchEvent):
                    counts[i] += 1
                    if window["open"]:
                        in_window[i] += 1
                    if ev.revision < last_rev[i]:
                        backwards += 1
                    last_rev[i] = ev.revision
                    if reached_at[i] is None and ev.revision >= window["until"]:
                        reached_at[i] = time.monotonic()

        tasks = [asyncio.create_task(run(i)) for i in range(watchers)]
        await asyncio.sleep(1.0)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = (await reader.readline()).decode().split()
            if not line:
                break
            if line[0] == "start":
                window["open"] = True
            elif line[0] == "close":
                window["open"] = False
            elif line[0] == "stop":
                window["until"] = int(line[1])
                t0 = time.monotonic()
                for i in range(watchers):
                    if last_rev[i] >= window["until"] and reached_at[i] is None:
                        reached_at[i] = t0
                deadline = t0 + 60
                while time.monotonic() < deadline and any(r is None for r in reached_at):
                    await asyncio.sleep(0.05)
                drained = [r - t0 if r is not None else None for r in reached_at]
                print(
                    json.dumps(
                        {
                            "index": index,
                            "counts": counts,
                            "in_window": in_window,
                            "backwards": backwards,
                            "drain_s": drained,
                        }
                    ),
                    flush=True,
                )
                break
        for t in tasks:
            t.cancel()
        for w in ws:
            await w.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5 s per phase")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--writers", type=int, default=64)
    p.add_argument("--watchers", type=int, default=100)
    p.add_argument("--watcher-procs", type=int, default=4)
    p.add_argument("--out", default="bench-out/watch_fanout")
    p.add_argument("--child", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("--endpoints", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child >= 0:
        asyncio.run(child(args.endpoints.split(","), args.watchers, args.child))
        return 0
    seconds = 5.0 if args.quick else args.seconds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, object] = {
        "writers": args.writers,
        "watchers": args.watchers,
        "seconds": seconds,
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
    }
    with KvstoreCluster(out / "cluster", base_port=47300) as cluster:
        eps = cluster.endpoints
        log(f"== phase 1: {args.writers} writers, no watcher, {seconds:.0f} s")
        n, _ = asyncio.run(write_for(eps, args.writers, seconds))
        result["writes_per_s_alone"] = n / seconds
        log(f"   {n / seconds:.0f} writes/s")
        per = [args.watchers // args.watcher_procs] * args.watcher_procs
        per[0] += args.watchers - sum(per)
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(i),
                    "--watchers",
                    str(k),
                    "--endpoints",
                    ",".join(eps[i % 3 :] + eps[: i % 3]),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i, k in enumerate(per)
        ]
        try:
            for pr in procs:
                assert pr.stdout is not None
                if pr.stdout.readline().strip() != "ready":
                    raise RuntimeError("a watcher process did not start")
            log(f"== phase 2: {args.watchers} watchers of bench/ + the same writers")
            for pr in procs:
                assert pr.stdin is not None
                pr.stdin.write("start\n")
                pr.stdin.flush()
            n2, last = asyncio.run(write_for(eps, args.writers, seconds))
            for pr in procs:
                assert pr.stdin is not None
                pr.stdin.write("close\n")
                pr.stdin.flush()
            for pr in procs:
                assert pr.stdin is not None
                pr.stdin.write(f"stop {last}\n")
                pr.stdin.flush()
            reports = []
            for pr in procs:
                assert pr.stdout is not None
                reports.append(json.loads(pr.stdout.readline()))
        finally:
            for pr in procs:
                pr.kill()
                pr.wait()
    counts = [c for r in reports for c in r["counts"]]
    window = sum(c for r in reports for c in r["in_window"])
    drains = [d for r in reports for d in r["drain_s"]]
    result.update(
        writes_per_s_with_watchers=n2 / seconds,
        write_cost_pct=100.0 * (1 - (n2 / seconds) / result["writes_per_s_alone"]),  # type: ignore[operator]
        events_per_s_delivered=window / seconds,
        events_per_watcher=[min(counts), max(counts)],
        every_watcher_same_count=min(counts) == max(counts),
        revision_went_back=sum(r["backwards"] for r in reports),
        drain_s_max=max((d for d in drains if d is not None), default=None),
        watchers_not_drained=sum(d is None for d in drains),
        load_after=os.getloadavg(),
    )
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
