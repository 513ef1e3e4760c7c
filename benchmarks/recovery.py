#!/usr/bin/env python3
"""Recovery: a follower 1,000,000 writes behind catches up; a node with 1 M keys restarts.

    python benchmarks/recovery.py                    # 1,000,000 keys of 256 B
    python benchmarks/recovery.py --keys 100000      # a smaller, quicker run

Starts a 3-node kvstore cluster (Raft, fsync on; ports 47601-47603, metrics 47701-47703,
--map-size-mb 4096 so 1 M keys and their log fit), then:

1. stops one follower (SIGKILL) and writes --keys distinct keys of --value-size bytes
   through the other two (--processes load processes, --concurrency puts in flight each);
2. starts the follower again and times, from its process start, until it serves an
   eventual read and until its applied index reaches the leader's commit index as it
   stood when the follower started ("caught up": every write it missed is applied);
3. stops that node (SIGTERM) and starts it again with the 1 M keys on disk, and times
   until it serves an eventual read of a key written in step 1, and a strong read;
4. reports each node's resident memory (VmRSS) with the keys loaded, and the data size.

Issue 13's targets: catch-up <= 10 s, restart to serving <= 5 s. Writes
bench-out/recovery/{results.json, summary.md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from clusters import KvstoreCluster, ProcessGroup  # noqa: E402

from kvstore.bench.workload import key_name  # noqa: E402

CATCH_UP_TARGET_S = 10.0
RESTART_TARGET_S = 5.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def scrape(port: int) -> dict[str, float]:
    """Prometheus text of a node -> {'name{labels}': value}; {} when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def group1(snap: dict[str, float], name: str) -> int:
    return int(snap.get(f'{name}{{group="1"}}', -1))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / (1 << 20)


# -- the loader ---------------------------------------------------------------------------


def _load_slice(endpoints: list[str], lo: int, hi: int, value: bytes, concurrency: int) -> int:
    from kvstore.bench.runner import _new_event_loop
    from kvstore.bench.target import open_target

    async def main() -> int:
        target = await open_target("kvstore", endpoints, 10.0)
        pending = iter(range(lo, hi))
        written = 0

        async def writer() -> None:
            nonlocal written
            for i in pending:
                for attempt in range(20):
                    try:
                        await target.put(key_name(i), value)
                    except Exception:
                        await asyncio.sleep(0.05 * (attempt + 1))
                        continue
                    written += 1
                    break

        try:
            await asyncio.gather(*(writer() for _ in range(concurrency)))
        finally:
            await target.close()
        return written

    with asyncio.Runner(loop_factory=_new_event_loop) as runner:
        return runner.run(main())


def load(endpoints: list[str], keys: int, value_size: int, processes: int, conc: int) -> float:
    """Write keys 0..keys-1 once from ``processes`` processes; returns the seconds taken."""
    value = os.urandom(value_size)
    step = -(-keys // processes)
    slices = [(i * step, min(keys, (i + 1) * step)) for i in range(processes)]
    t0 = time.monotonic()
    with mp.get_context("spawn").Pool(processes) as pool:
        done = pool.starmap(_load_slice, [(endpoints, lo, hi, value, conc) for lo, hi in slices])
    took = time.monotonic() - t0
    if sum(done) != keys:
        raise RuntimeError(f"wrote {sum(done):,} of {keys:,} keys")
    return took


# -- probes -------------------------------------------------------------------------------


def wait_serving(endpoint: str, key: bytes, mode: str, deadline_s: float) -> float | None:
    """Monotonic time at which a `mode` read of ``key`` through ``endpoint`` alone first
    returned a value, or None by the deadline."""
    from kvstore.client import Client

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with Client([endpoint], timeout=1.0) as c:
                if c.get(key, read_mode=mode) is not None:
                    return time.monotonic()
        except Exception:
            pass
        time.sleep(0.02)
    return None


def wait_applied(mport: int, index: int, deadline_s: float) -> float | None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if group1(scrape(mport), "kvstore_applied_index") >= index:
            return time.monotonic()
        time.sleep(0.02)
    return None


class Node:
    """One node of the cluster, stopped and started again with the same command line."""

    def __init__(self, kv: KvstoreCluster, i: int) -> None:
        self.kv = kv
        self.i = i
        self.proc = kv.group.procs[i - 1]
        self.argv = list(self.proc.args)  # type: ignore[arg-type]
        self.port = kv.ports[i - 1]
        self.mport = kv.metrics_ports[i - 1]

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig: int) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)

    def start(self) -> float:
        t0 = time.monotonic()
        group = ProcessGroup("kvstore", self.kv.group.log_dir)
        group.start(f"node{self.i}-again-{int(t0)}", self.argv)
        self.proc = group.procs[0]
        self.kv.group.procs[self.i - 1] = self.proc  # stopped with the cluster
        return t0


def leader_of(kv: KvstoreCluster) -> int:
    for i, mport in zip(kv.ids, kv.metrics_ports, strict=True):
        if group1(scrape(mport), "kvstore_is_leader") == 1:
            return i
    raise RuntimeError("no leader")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--value-size", type=int, default=256)
    p.add_argument("--processes", type=int, default=2, help="load processes")
    p.add_argument("--concurrency", type=int, default=256, help="puts in flight per process")
    p.add_argument("--out", default=str(ROOT / "bench-out" / "recovery"))
    p.add_argument("--kvstore-args", default="", help="extra `kvstore serve` flags, quoted")
    p.add_argument(
        "--give-up-s", type=float, default=180.0, help="stop waiting for a node after this long"
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"keys": args.keys, "value_size": args.value_size}
    extra = ["--map-size-mb=4096", *args.kvstore_args.split()]
    with KvstoreCluster(out / "data", base_port=47600, extra_args=extra) as kv:
        nodes = {i: Node(kv, i) for i in kv.ids}
        leader = leader_of(kv)
        lag = nodes[next(i for i in kv.ids if i != leader)]
        live = [nodes[i].endpoint for i in kv.ids if i != lag.i]
        log(f"== leader node {leader}; stopping follower node {lag.i} (SIGKILL)")
        lag.stop(signal.SIGKILL)
        log(f"== writing {args.keys:,} keys of {args.value_size} B through {live}")
        res["load_s"] = round(
            load(live, args.keys, args.value_size, args.processes, args.concurrency), 1
        )
        log(f"   took {res['load_s']} s ({args.keys / res['load_s']:,.0f} writes/s)")
        commit = group1(scrape(nodes[leader].mport), "kvstore_commit_index")
        res["leader_commit_index"] = commit
        last_key = key_name(args.keys - 1)

        log(f"== starting node {lag.i} again; it must apply up to index {commit}")
        t0 = lag.start()
        served = wait_serving(lag.endpoint, key_name(0), "eventual", args.give_up_s)
        caught = wait_applied(lag.mport, commit, args.give_up_s)
        res["catch_up"] = {
            "serving_s": None if served is None else round(served - t0, 2),
            "caught_up_s": None if caught is None else round(caught - t0, 2),
            "target_s": CATCH_UP_TARGET_S,
        }
        log(f"   {res['catch_up']}")
        res["rss_mib"] = {i: round(rss_mib(n.proc.pid), 1) for i, n in nodes.items()}
        res["data_mib"] = {i: round(dir_mib(out / "data" / f"node{i}"), 1) for i in kv.ids}
        log(f"   resident memory (MiB) {res['rss_mib']}; data on disk (MiB) {res['data_mib']}")

        again = nodes[next(i for i in kv.ids if i != leader)]
        log(f"== restarting node {again.i} (SIGTERM, then start) with {args.keys:,} keys")
        again.stop(signal.SIGTERM)
        t0 = again.start()
        eventual = wait_serving(again.endpoint, last_key, "eventual", args.give_up_s)
        strong = wait_serving(again.endpoint, last_key, "strong", args.give_up_s)
        res["restart"] = {
            "eventual_read_s": None if eventual is None else round(eventual - t0, 2),
            "strong_read_s": None if strong is None else round(strong - t0, 2),
            "target_s": RESTART_TARGET_S,
            "rss_mib_after": round(rss_mib(again.proc.pid), 1),
        }
        log(f"   {res['restart']}")
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    cu, rs = res["catch_up"], res["restart"]

    def met(v: float | None, bound: float) -> str:
        return (
            f"NOT met (> {args.give_up_s:g} s)"
            if v is None
            else ("met" if v <= bound else "NOT met")
        )

    md = [
        f"Recovery, {args.keys:,} keys of {args.value_size} B, 3 nodes (Raft, fsync on)",
        "",
        "| measure | seconds | target | met |",
        "|---|---|---|---|",
        f"| follower {args.keys:,} writes behind: start -> first eventual read served "
        f"| {cu['serving_s']} | - | - |",
        f"| follower {args.keys:,} writes behind: start -> caught up (applied = leader's "
        f"commit) | {cu['caught_up_s']} | <= {CATCH_UP_TARGET_S:g} "
        f"| {met(cu['caught_up_s'], CATCH_UP_TARGET_S)} |",
        f"| restart with {args.keys:,} keys: start -> eventual read served "
        f"| {rs['eventual_read_s']} | <= {RESTART_TARGET_S:g} "
        f"| {met(rs['eventual_read_s'], RESTART_TARGET_S)} |",
        f"| restart with {args.keys:,} keys: start -> strong read served "
        f"| {rs['strong_read_s']} | <= {RESTART_TARGET_S:g} "
        f"| {met(rs['strong_read_s'], RESTART_TARGET_S)} |",
        "",
        f"Loading took {res['load_s']} s. Resident memory per node with the keys loaded "
        f"(MiB): {res['rss_mib']}; after the restart: {rs['rss_mib_after']}. Data "
        f"directories (MiB): {res['data_mib']}.",
    ]
    text = "\n".join(md)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
