#!/usr/bin/env python3
"""`kvstore serve` with timing probes around the node driver, for profile_write.py.

    python benchmarks/traced_node.py serve --id 1 ... (the `kvstore` CLI's arguments)

Rule this module keeps: it changes no behaviour of the node; it wraps a few NodeDriver
methods from the outside to stamp each proposed log entry as it moves through the node
(queued -> proposed -> appended on disk -> seen committed -> applied -> answered) and
each loop iteration (busy, persist), and rewrites the stamps as JSON to $KVSTORE_TRACE_OUT
once a second. Times are time.monotonic() seconds.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvstore.node import driver as driver_mod

D = driver_mod.NodeDriver
now = time.monotonic
OUT = os.environ.get("KVSTORE_TRACE_OUT", "")
MAX_RECORDS = 200_000

entries: dict[int, dict[str, float]] = {}  # log index -> stamps
iterations: list[tuple[float, float, float]] = []  # (start, end, persist seconds)
inbox_waits: list[tuple[float, float]] = []  # (iteration start, oldest message age)
enqueued: dict[int, float] = {}  # id(future) -> when the command reached the driver
delivered_at: list[float] = []
lock = threading.Lock()
last_dump = [0.0]


def _stamp(index: int, key: str, t: float) -> None:
    rec = entries.get(index)
    if rec is None:
        if len(entries) >= MAX_RECORDS:
            return
        rec = entries[index] = {}
    rec.setdefault(key, t)


def _dump() -> None:
    if not OUT:
        return
    with lock:
        payload: dict[str, Any] = {
            "entries": {str(k): v for k, v in entries.items()},
            "iterations": iterations[-MAX_RECORDS:],
            "inbox_waits": inbox_waits[-MAX_RECORDS:],
        }
    tmp = OUT + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, OUT)


_propose = D.propose


def propose(self: Any, group: int, cmd: Any, timeout: float) -> Any:
    t = now()
    fut = _propose(self, group, cmd, timeout)
    enqueued[id(fut)] = t
    return fut


_propose_writes = D._propose_writes


def propose_writes(self: Any, g: Any) -> None:
    before = set(g.inflight)
    _propose_writes(self, g)
    t = now()
    for idx in set(g.inflight) - before:
        inf = g.inflight[idx]
        qs = [enqueued.pop(id(w.fut), t) for w in inf.writes]
        _stamp(idx, "queued", sum(qs) / len(qs))
        _stamp(idx, "proposed", t)
        entries[idx]["ops"] = len(inf.writes) if idx in entries else 0


_plan = D._plan


def plan(self: Any, g: Any, rd: Any) -> Any:
    t = now()
    for e in rd.committed:
        if e.index in entries:
            _stamp(e.index, "commit_seen", t)
    return _plan(self, g, rd)


_persist = D._persist


def persist(self: Any, plans: list[Any]) -> Any:
    t0 = now()
    out = _persist(self, plans)
    t1 = now()
    with lock:
        for p in plans:
            for e in p.rd.entries:
                if e.index in entries:
                    _stamp(e.index, "appended", t1)
            for e in p.rd.committed:
                if e.index in entries:
                    _stamp(e.index, "applied", t1)
        entries_persist.append((t0, t1))
    return out


entries_persist: list[tuple[float, float]] = []

_resolve = D._resolve_writes


def resolve(self: Any, g: Any, committed: Any, results: Any) -> None:
    _resolve(self, g, committed, results)
    t = now()
    for e in committed:
        if e.index in entries:
            _stamp(e.index, "answered", t)


_deliver = D.deliver


def deliver(self: Any, msgs: Any) -> None:
    if not self._inbox:
        delivered_at.append(now())
    _deliver(self, msgs)


_iteration = D._iteration


async def iteration(self: Any) -> bool:
    t0 = now()
    if self._inbox and delivered_at:
        inbox_waits.append((t0, t0 - delivered_at[-1]))
    delivered_at.clear()
    n0 = len(entries_persist)
    busy: bool = await _iteration(self)
    t1 = now()
    persist_s = sum(b - a for a, b in entries_persist[n0:])
    iterations.append((t0, t1, persist_s))
    if t1 - last_dump[0] > 1.0:
        last_dump[0] = t1
        _dump()
    return busy


D.propose = propose  # type: ignore[method-assign]
D._propose_writes = propose_writes  # type: ignore[method-assign]
D._plan = plan  # type: ignore[method-assign]
D._persist = persist  # type: ignore[method-assign]
D._resolve_writes = resolve  # type: ignore[method-assign]
D.deliver = deliver  # type: ignore[method-assign]
D._iteration = iteration  # type: ignore[method-assign]

if __name__ == "__main__":
    import atexit

    from kvstore.cli import main

    atexit.register(_dump)
    sys.exit(main(sys.argv[1:]))
