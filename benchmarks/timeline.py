#!/usr/bin/env python3
"""One write (or strong read) at a time, across all three nodes: where the time goes.

    python benchmarks/timeline.py                      # writes, 1 client, 5 s
    python benchmarks/timeline.py --workload strong-reads
    python benchmarks/timeline.py --tree /tmp/old      # another checkout's nodes (A/B)

Starts a 3-node cluster on 127.0.0.1:47761-47763 whose nodes run this file as
`timeline.py serve ...`: the real `kvstore serve` with a few driver, replica-loop,
transport and client-service methods wrapped from outside to stamp events
(time.monotonic, one clock for every process of the machine) into memory, written out
when the node stops. Drives it with one `kvstore bench` client, then lines the stamps of
each operation up across the nodes and prints the median of each step (leader, both
followers). The wrappers change no behaviour; they cost a few microseconds per event.
Rule this module keeps: every process it starts is stopped (clusters.py).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# -- inside a node: `timeline.py serve ...` ------------------------------------------------
def _serve() -> int:
    sys.path.insert(0, os.environ.get("KVSTORE_TREE") or str(ROOT))
    import atexit
    import signal
    import threading

    from kvstore.node import driver as dm
    from kvstore.node import replica as rm
    from kvstore.node import transport as tm
    from kvstore.server import batch as bm
    from kvstore.server import kv as kvm

    out = os.environ["TIMELINE_OUT"]
    events: list[tuple[Any, ...]] = []
    now = time.monotonic

    def ev(*what: Any) -> None:
        events.append((now(), threading.get_ident() % 10000, *what))

    def dump() -> None:
        with open(out, "w") as f:
            for e in events:
                f.write(" ".join(map(str, e)) + "\n")

    def wrap(cls: Any, name: str, before: Any) -> None:
        orig = getattr(cls, name)

        def f(*a: Any, **k: Any) -> Any:
            before(*a, **k)
            return orig(*a, **k)

        setattr(cls, name, f)

    def msgs(ms: Any) -> str:
        return ",".join(f"{m.type.name}>{m.to}:{m.index}+{len(m.entries)}" for m in ms)

    wrap(kvm.KVService, "dispatch", lambda self, op, sink: ev("dispatch"))
    wrap(dm.NodeDriver, "deliver", lambda self, ms: ev("deliver", msgs(ms)))

    def wire(link: Any, ms: Any) -> None:
        if ms:
            ev("wire", link.peer_id, msgs(ms))

    wrap(tm._Link, "_batch", wire)
    wrap(bm.BatchCall, "_pack", lambda self: ev("reply"))
    wrap(rm.ReplicaLoop, "answer_applied", lambda self, b, r: ev("answered"))
    begin = rm.ReplicaLoop.begin

    def traced_begin(self: Any, groups: Any) -> Any:
        batch = begin(self, groups)
        for _, rd in batch.readies if batch is not None else ():
            ents = [e.index for e in rd.entries]
            com = [e.index for e in rd.committed]
            ev("begin", f"ent={ents}".replace(" ", ""), f"com={com}".replace(" ", ""))
        return batch

    rm.ReplicaLoop.begin = traced_begin  # type: ignore[method-assign]
    persist = getattr(dm, "persist_plans")  # noqa: B009 - replaced below, from outside

    def traced_persist(*a: Any, **k: Any) -> Any:
        ev("persist_start")
        try:
            return persist(*a, **k)
        finally:
            ev("persist_end")

    setattr(dm, "persist_plans", traced_persist)  # noqa: B010
    atexit.register(dump)

    def on_term(*_: Any) -> None:
        dump()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    from kvstore.cli import main

    return main()


# -- the analysis --------------------------------------------------------------------------
def _load(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def _med(xs: list[float]) -> str:
    """Median and mean in ms (means add up along a path, medians need not)."""
    if not xs:
        return "- | -"
    return f"{statistics.median(xs) * 1e3:.2f} | {statistics.mean(xs) * 1e3:.2f}"


def analyze_writes(nodes: dict[int, list[list[str]]]) -> list[tuple[str, str]]:
    leader = max(nodes, key=lambda n: sum(1 for e in nodes[n] if e[2] == "dispatch"))
    ops: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for e in nodes[leader]:
        t, kind, rest = float(e[0]), e[2], e[3:]
        if kind == "dispatch":
            if cur is not None and "reply" in cur:
                cur["next"] = t
                ops.append(cur)
            cur = {"dispatch": t}
        elif cur is None:
            continue
        elif kind == "begin":
            m = re.fullmatch(r"ent=\[(\d+)\]", rest[0])
            if m and "begin" not in cur:
                cur["begin"], cur["k"] = t, int(m.group(1))
            elif "k" in cur and re.search(rf"[\[,]{cur['k']}[\],]", rest[1]):
                cur.setdefault("com", t)
        elif kind == "persist_end" and "begin" in cur:
            cur.setdefault("p1", t)
        elif kind == "deliver" and "k" in cur and f"APPEND_RESP>{leader}:{cur['k']}+" in rest[0]:
            cur.setdefault("acks", []).append(t)
        elif kind == "answered" and "com" in cur:
            cur.setdefault("answered", t)
        elif kind == "reply" and "answered" in cur:
            cur.setdefault("reply", t)
    need = ("begin", "p1", "com", "answered", "reply", "next")
    ok = [o for o in ops if all(k in o for k in need) and o.get("acks")]

    def d(a: str, b: str) -> list[float]:
        return [o[b] - o[a] for o in ok]

    rows = [
        (f"writes traced (leader: node {leader})", f"{len(ok)} |"),
        ("leader: request -> proposed, APPENDs out", _med(d("dispatch", "begin"))),
        ("leader: its own append persist", _med(d("begin", "p1"))),
        ("first follower ack back (from proposed)", _med([o["acks"][0] - o["begin"] for o in ok])),
        ("leader: ack -> committed Ready", _med([o["com"] - o["acks"][0] for o in ok])),
        ("leader: apply until answered (writer thread)", _med(d("com", "answered"))),
        ("leader: answered -> reply leaves", _med(d("answered", "reply"))),
        ("client: reply -> its next request arrives", _med(d("reply", "next"))),
        ("one write, request to next request", _med(d("dispatch", "next"))),
    ]
    begun = {o["k"]: o["begin"] for o in ok}
    for f in sorted(n for n in nodes if n != leader):
        rows += _follower(leader, f, nodes, begun)
    return rows


def _follower(
    leader: int, f: int, nodes: dict[int, list[list[str]]], begun: dict[int, float]
) -> list[tuple[str, str]]:
    sent: dict[int, float] = {}
    for e in nodes[leader]:
        if e[2] == "wire" and e[3] == str(f):
            for m in re.finditer(r"APPEND>\d+:(\d+)\+[1-9]", e[4]):
                sent.setdefault(int(m.group(1)) + 1, float(e[0]))
    rows: list[dict[str, float]] = []
    cur: dict[str, float] | None = None
    for e in nodes[f]:
        t, kind = float(e[0]), e[2]
        got = re.search(r"APPEND>\d+:(\d+)\+[1-9]", e[3]) if kind == "deliver" else None
        if got:
            cur = {"k": int(got.group(1)) + 1, "deliver": t}
            rows.append(cur)
        elif cur is None:
            continue
        elif kind == "begin" and f"ent=[{int(cur['k'])}]" == e[3]:
            cur.setdefault("begin", t)
        elif kind == "persist_start" and "begin" in cur:
            cur.setdefault("ps", t)
        elif kind == "persist_end" and "ps" in cur:
            cur.setdefault("pe", t)
        elif kind == "wire" and "pe" in cur and f":{int(cur['k'])}+" in e[4]:
            cur.setdefault("wire", t)
    ok = [r for r in rows if all(k in r for k in ("begin", "ps", "pe", "wire"))]
    ok = [r for r in ok if int(r["k"]) in sent and int(r["k"]) in begun]
    return [
        (
            f"follower {f}: proposed -> APPEND written",
            _med([sent[int(r["k"])] - begun[int(r["k"])] for r in ok]),
        ),
        (
            f"follower {f}: APPEND written -> delivered",
            _med([r["deliver"] - sent[int(r["k"])] for r in ok]),
        ),
        (f"follower {f}: delivered -> persist starts", _med([r["ps"] - r["deliver"] for r in ok])),
        (f"follower {f}: persist (writer thread)", _med([r["pe"] - r["ps"] for r in ok])),
        (f"follower {f}: persisted -> ack written", _med([r["wire"] - r["pe"] for r in ok])),
    ]


def analyze_reads(nodes: dict[int, list[list[str]]]) -> list[tuple[str, str]]:
    leader = max(nodes, key=lambda n: sum(1 for e in nodes[n] if e[2] == "dispatch"))
    ops: list[dict[str, float]] = []
    cur: dict[str, float] | None = None
    for e in nodes[leader]:
        t, kind = float(e[0]), e[2]
        if kind == "dispatch":
            if cur is not None and "reply" in cur:
                cur["next"] = t
                ops.append(cur)
            cur = {"dispatch": t}
        elif cur is None:
            continue
        elif kind == "wire" and "HEARTBEAT>" in e[4]:
            cur.setdefault("hb", t)
        elif kind == "deliver" and "HEARTBEAT_RESP" in e[3] and "hb" in cur:
            cur.setdefault("resp", t)
        elif kind == "reply" and "resp" in cur:
            cur.setdefault("reply", t)
    ok = [o for o in ops if all(k in o for k in ("hb", "resp", "reply", "next"))]

    def d(a: str, b: str) -> list[float]:
        return [o[b] - o[a] for o in ok]

    return [
        (f"strong reads traced (leader: node {leader})", f"{len(ok)} |"),
        ("leader: request -> first heartbeat written", _med(d("dispatch", "hb"))),
        ("heartbeat round: written -> first answer delivered", _med(d("hb", "resp"))),
        ("leader: answer delivered -> reply leaves", _med(d("resp", "reply"))),
        ("client: reply -> its next request arrives", _med(d("reply", "next"))),
        ("one read, request to next request", _med(d("dispatch", "next"))),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workload", choices=("writes", "strong-reads"), default="writes")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--tree", default="", help="run the nodes from another checkout")
    p.add_argument("--out", default=str(ROOT / "bench-out" / "timeline"))
    args = p.parse_args(argv)
    sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
    from clusters import KvstoreCluster

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {i: out / f"node{i}.events" for i in (1, 2, 3)}
    env = {"KVSTORE_TREE": args.tree} if args.tree else {}
    wl = ["--read-ratio", "0"] if args.workload == "writes" else ["--read-ratio", "1"]
    with KvstoreCluster(
        out / "data",
        base_port=47760,
        launcher=[str(Path(__file__).resolve())],
        env_for=lambda i: {"TIMELINE_OUT": str(files[i]), **env},
    ) as kv:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "kvstore.cli",
                "bench",
                "--endpoints",
                ",".join(kv.endpoints),
                "--clients",
                "1",
                "--duration",
                str(args.duration),
                "--read-mode",
                "strong",
                *wl,
            ],
            check=True,
        )
    nodes = {i: _load(f) for i, f in files.items()}
    rows = analyze_writes(nodes) if args.workload == "writes" else analyze_reads(nodes)
    print(f"\n| {args.workload}, one client: step | median ms | mean ms |\n|---|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(_serve() if sys.argv[1:2] == ["serve"] else main())
