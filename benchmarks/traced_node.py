#!/usr/bin/env python3
"""`kvstore serve` with timing probes around the node driver, for profile_write.py.

    python benchmarks/traced_node.py serve --id 1 ... (the `kvstore` CLI's arguments)

Rule this module keeps: it changes no behaviour of the node (every probe swallows its own
errors, so a driver that changed shape loses stamps, never requests); it wraps a few NodeDriver
methods from the outside to stamp each proposed log entry as it moves through the node
(queued -> proposed -> appended on disk -> seen committed -> applied -> answered) and
each loop iteration (busy, persist), and appends what is complete to $KVSTORE_TRACE_OUT
(JSON lines) once a second, so the cost of tracing stays flat. Times are time.monotonic()
seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

# KVSTORE_TREE: run another checkout's kvstore (profile_write.py --tree, for before/after).
sys.path.insert(0, os.environ.get("KVSTORE_TREE") or str(Path(__file__).resolve().parent.parent))

from kvstore.node import driver as driver_mod

D = driver_mod.NodeDriver
try:  # newer nodes: the per-group Ready loop is its own class (node/replica.py)
    from kvstore.node.replica import ReplicaLoop as R
except ImportError:
    R = D
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
    """Append answered entries and finished iterations, then forget them."""
    if not OUT:
        return
    with lock:
        done = [(k, v) for k, v in entries.items() if "answered" in v]
        for k, _ in done:
            del entries[k]
        its, iterations[:] = list(iterations), []
        waits, inbox_waits[:] = list(inbox_waits), []
        entries_persist[:] = []
        # Entries that never complete (lost proposals) must not pile up.
        if len(entries) > 10_000:
            entries.clear()
    with open(OUT, "a") as f:
        for k, v in done:
            f.write(json.dumps({"entry": k, **v}) + "\n")
        if its:
            f.write(json.dumps({"iterations": its}) + "\n")
        if waits:
            f.write(json.dumps({"inbox_waits": waits}) + "\n")


_propose = D.propose


def propose(self: Any, *args: Any, **kwargs: Any) -> Any:
    t = now()
    fut = _propose(self, *args, **kwargs)  # returns the write's completion (future/callback)
    enqueued[id(fut)] = t
    return fut


_propose_writes = R._propose_writes


def propose_writes(self: Any, g: Any) -> None:
    before = set(g.inflight)
    _propose_writes(self, g)
    try:
        t = now()
        for idx in set(g.inflight) - before:
            inf = g.inflight[idx]
            qs = [enqueued.pop(id(w.fut), getattr(w, "queued_at", t)) for w in inf.writes]
            _stamp(idx, "queued", sum(qs) / len(qs) if qs else t)
            _stamp(idx, "proposed", t)
            if idx in entries:
                entries[idx]["ops"] = len(inf.writes)
        if len(enqueued) > 100_000:
            enqueued.clear()
    except Exception:  # tracing must never break the node
        pass


_plan = R.plan if hasattr(R, "plan") else R._plan


def plan(self: Any, g: Any, rd: Any, *args: Any, **kwargs: Any) -> Any:
    t = now()
    for e in getattr(rd, "committed", ()):
        if e.index in entries:
            _stamp(e.index, "commit_seen", t)
    return _plan(self, g, rd, *args, **kwargs)


def _stamp_persisted(plans: list[Any], t0: float, t1: float) -> None:
    try:
        with lock:
            for p in plans:
                for e in p.rd.entries:
                    if e.index in entries:
                        _stamp(e.index, "appended", t1)
                for e in p.rd.committed:
                    if e.index in entries:
                        _stamp(e.index, "applied", t1)
            entries_persist.append((t0, t1))
    except Exception:  # tracing must never break the node
        pass


DA: Any = D  # the shape differs between driver versions
MOD: Any = driver_mod

if hasattr(D, "_persist"):  # older drivers: a method on the driver
    _persist = DA._persist

    def persist(self: Any, plans: list[Any], *args: Any, **kwargs: Any) -> Any:
        t0 = now()
        out = _persist(self, plans, *args, **kwargs)
        _stamp_persisted(plans, t0, now())
        return out

    DA._persist = persist
else:  # newer drivers: kvstore.node.persist.persist_plans(storage, metrics, plans, ...)
    _persist_plans = MOD.persist_plans

    def persist_plans(storage: Any, metrics: Any, plans: list[Any], *args: Any) -> Any:
        t0 = now()
        out = _persist_plans(storage, metrics, plans, *args)
        _stamp_persisted(plans, t0, now())
        return out

    MOD.persist_plans = persist_plans


entries_persist: list[tuple[float, float]] = []

_resolve = R._resolve_writes


def resolve(self: Any, g: Any, committed: Any, *args: Any, **kwargs: Any) -> Any:
    out = _resolve(self, g, committed, *args, **kwargs)
    t = now()
    for e in committed:
        if e.index in entries:
            _stamp(e.index, "answered", t)
    return out


_deliver = D.deliver


def deliver(self: Any, msgs: Any, *args: Any, **kwargs: Any) -> Any:
    if not getattr(self, "_inbox", True):
        delivered_at.append(now())
    return _deliver(self, msgs, *args, **kwargs)


_iteration = D._iteration


async def iteration(self: Any) -> bool:
    t0 = now()
    if getattr(self, "_inbox", None) and delivered_at:
        inbox_waits.append((t0, t0 - delivered_at[-1]))
    delivered_at.clear()
    n0 = len(entries_persist)
    busy: bool = await _iteration(self)
    t1 = now()
    persist_s = sum(b - a for a, b in entries_persist[n0:]) if n0 <= len(entries_persist) else 0
    iterations.append((t0, t1, persist_s))
    if t1 - last_dump[0] > 1.0:
        last_dump[0] = t1
        with contextlib.suppress(Exception):  # tracing must never break the node
            _dump()
    return busy


D.propose = propose  # type: ignore[method-assign]
R._propose_writes = propose_writes  # type: ignore[method-assign]
if hasattr(R, "plan"):
    R.plan = plan  # type: ignore[method-assign]
else:
    R._plan = plan  # type: ignore[method-assign]
R._resolve_writes = resolve  # type: ignore[method-assign]
D.deliver = deliver  # type: ignore[method-assign]
D._iteration = iteration  # type: ignore[method-assign]

if os.environ.get("KVSTORE_TRACE_READINDEX_RETRY") == "1":
    # Experiment (measurement only): let every periodic heartbeat carry the newest pending
    # ReadIndex context, as etcd-raft does, so a lost round is retried.
    from kvstore.consensus.raft import leader as raft_leader

    _bcast = raft_leader.bcast_heartbeat

    def bcast_heartbeat(r: Any, ctx: bytes) -> None:
        if not ctx and r.read_only.queue:
            ctx = r.read_only.queue[-1]
        _bcast(r, ctx)

    raft_leader.bcast_heartbeat = bcast_heartbeat

if __name__ == "__main__":
    import atexit

    from kvstore.cli import main

    atexit.register(_dump)
    sys.exit(main(sys.argv[1:]))
