"""Runs the per-key searches side by side and stops at the first key that fails.

Linearizability is compositional: each key is searched on its own (:mod:`.search`). Keys
are dealt to forked worker processes (largest first, each to the least loaded worker); a
worker interleaves its keys in short slices, so one hard key cannot hide an easy failing
one behind it. The first key found not linearizable ends the whole check (its verdict
decides the history), unless the caller wants every key decided. At the deadline the
workers are stopped and the keys not decided yet are reported as such: the caller turns
that into "unknown", never into a verdict.

Invariant: an outcome is reported for a key only when its search finished; keys stopped
early or cut by the deadline have none.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import multiprocessing.connection
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvstore.jepsen.checker.models import Model
from kvstore.jepsen.checker.search import KeySearch
from kvstore.jepsen.history import Operation

SLICE = 0.05
"""Seconds a worker spends on one key before turning to its next undecided key."""

FORK_MIN_OPS = 2000
"""Below this many operations in all, forking workers costs more than it saves."""


@dataclass(frozen=True, slots=True)
class KeyOutcome:
    """A finished search: ``longest`` and ``stuck`` index the key's operations."""

    index: int
    linearizable: bool
    longest: tuple[int, ...]
    stuck: int | None
    seconds: float
    explored: int


def default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus)


def _interleave(
    groups: Sequence[Sequence[Operation]],
    indices: Sequence[int],
    model: Model,
    deadline: float,
    stop_on_failure: bool,
    report: Callable[[KeyOutcome], None],
) -> None:
    """Searches the given keys in turns of :data:`SLICE` seconds until all are decided."""
    pending = [
        (i, KeySearch(groups[i], model)) for i in sorted(indices, key=lambda i: len(groups[i]))
    ]
    while pending:
        still = []
        for i, s in pending:
            now = time.monotonic()
            if now >= deadline:
                return
            if not s.run(min(deadline, now + SLICE)):
                still.append((i, s))
                continue
            report(KeyOutcome(i, s.linearizable, tuple(s.longest), s.stuck, s.seconds, s.explored))
            if stop_on_failure and not s.linearizable:
                return
        pending = still


def _deal(groups: Sequence[Sequence[Operation]], workers: int) -> list[list[int]]:
    loads = [0] * workers
    shares: list[list[int]] = [[] for _ in range(workers)]
    for i in sorted(range(len(groups)), key=lambda i: -len(groups[i])):
        w = loads.index(min(loads))
        shares[w].append(i)
        loads[w] += len(groups[i])
    return [s for s in shares if s]


def _worker(
    conn: multiprocessing.connection.Connection,
    groups: Sequence[Sequence[Operation]],
    indices: list[int],
    model: Model,
    deadline: float,
    stop_on_failure: bool,
) -> None:
    gc.disable()  # the search makes millions of small objects and no cycles worth collecting
    _interleave(groups, indices, model, deadline, stop_on_failure, conn.send)
    conn.close()


def search_keys(
    groups: Sequence[Sequence[Operation]],
    model: Model,
    *,
    deadline: float = math.inf,
    workers: int | None = None,
    stop_on_failure: bool = True,
) -> dict[int, KeyOutcome]:
    """Outcomes by key index, for the keys decided before ``deadline`` (or the first failure)."""
    found: dict[int, KeyOutcome] = {}
    n = default_workers() if workers is None else workers
    n = min(n, len(groups))
    total = sum(len(g) for g in groups)
    if n <= 1 or total < FORK_MIN_OPS or "fork" not in multiprocessing.get_all_start_methods():
        enabled = gc.isenabled()
        gc.disable()
        try:
            _interleave(
                groups,
                range(len(groups)),
                model,
                deadline,
                stop_on_failure,
                lambda o: found.__setitem__(o.index, o),
            )
        finally:
            if enabled:
                gc.enable()
        return found
    ctx = multiprocessing.get_context("fork")
    procs: list[multiprocessing.process.BaseProcess] = []
    conns: list[multiprocessing.connection.Connection] = []
    try:
        for share in _deal(groups, n):
            parent, child = ctx.Pipe(duplex=False)
            worker = ctx.Process(
                target=_worker,
                args=(child, groups, share, model, deadline, stop_on_failure),
                daemon=True,
            )
            worker.start()
            child.close()
            procs.append(worker)
            conns.append(parent)
        live = list(conns)
        while live:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready = multiprocessing.connection.wait(live, timeout=min(left, 3600.0))
            failed = False
            for c in ready:
                assert isinstance(c, multiprocessing.connection.Connection)
                try:
                    o = c.recv()
                except EOFError:  # that worker is done (or died: its keys stay undecided)
                    live.remove(c)
                    continue
                found[o.index] = o
                failed = failed or not o.linearizable
            if failed and stop_on_failure:
                break
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        for proc in procs:
            proc.join()
        for c in conns:
            c.close()
    return found
