"""Linearizability checking of a whole history: verdict, and a small window on failure.

As in Knossos and Porcupine, the history of each key is checked on its own (linearizability
is compositional): :mod:`.search` holds the per-key search (Wing-Gong with Lowe's
memoization, reads first), :mod:`.parallel` runs keys side by side and stops at the first
failure. Operations with an unknown outcome return at infinity, so the search may place
them at any point after their call, including after everything else (the same as never).

Verdicts are never guessed: a key whose search did not finish in time leaves the history
"unknown" (unless another key failed, which decides it).

When a key is not linearizable, :func:`check` shrinks the failure to a small window within
a time budget: the shortest prefix (in return order) that already fails, then drops
operations while the rest still fails and stays explainable (see ``Model.removable``).
Every window reported was itself found not linearizable.
This module performs no I/O.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from kvstore.jepsen.checker.models import Model
from kvstore.jepsen.checker.parallel import search_keys
from kvstore.jepsen.checker.search import search
from kvstore.jepsen.history import Operation, by_key

Verdict = Literal["linearizable", "not-linearizable", "unknown"]


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyFailure:
    """Why one key's history is not linearizable.

    ``window``: a small set of operations that cannot be ordered (shrunk from the history).
    ``longest``: the longest sequence of operations the search could linearize, in order.
    ``stuck``: the first operation whose return the longest linearization could not pass.
    """

    key: str | None
    window: tuple[Operation, ...]
    longest: tuple[Operation, ...]
    stuck: Operation | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    verdict: Verdict
    ops: int
    keys: int
    failures: tuple[KeyFailure, ...] = ()
    timed_out_keys: tuple[str | None, ...] = ()
    """Keys the search had not decided when the timeout ran out (verdict "unknown")."""
    stopped_keys: tuple[str | None, ...] = ()
    """Keys left unsearched because another key had already failed."""
    checked_keys: tuple[str | None, ...] = ()
    """Keys found linearizable."""
    seconds: float = 0.0
    per_key_seconds: dict[str | None, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.verdict == "linearizable"


def is_linearizable(
    ops: Sequence[Operation], model: Model, *, timeout: float | None = None
) -> bool:
    """One key's history. Raises TimeoutError when the search runs past ``timeout``."""
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    found = search(model.prune(ops), model, deadline)
    if found is None:
        raise TimeoutError("linearizability search timed out")
    return found.linearizable


def _prefix(ops: Sequence[Operation], model: Model, completed: int) -> list[Operation]:
    """The history as it stood when the ``completed``-th operation (by return) returned.

    Operations still in flight then have an unknown outcome; reads among them are dropped.
    """
    done = sorted((op for op in ops if not op.unknown), key=lambda o: o.ret)
    if completed >= len(done):
        return list(ops)
    cut = done[completed - 1].ret if completed > 0 else -math.inf
    out: list[Operation] = []
    for op in ops:
        if op.ret <= cut:
            out.append(op)
        elif op.call <= cut and not model.is_read(op):
            out.append(op if op.unknown else op.as_unknown())
    return out


def shrink(ops: Sequence[Operation], model: Model, *, budget: float = 2.0) -> tuple[Operation, ...]:
    """A small non-linearizable sub-history of a non-linearizable one (best effort in time)."""
    deadline = time.monotonic() + budget

    def fails(sub: Sequence[Operation]) -> bool:
        found = search(model.prune(sub), model, deadline)
        return found is not None and not found.linearizable

    n_done = sum(1 for op in ops if not op.unknown)
    lo, hi = 1, n_done  # invariant: prefix(hi) fails
    while lo < hi:
        mid = (lo + hi) // 2
        if fails(_prefix(ops, model, mid)):
            hi = mid
        else:
            lo = mid + 1
    window = _prefix(ops, model, hi)
    last = max((op for op in window if not op.unknown), key=lambda o: o.ret, default=None)

    def drop(chunk: Sequence[Operation]) -> bool:
        nonlocal window
        cut = list(chunk)
        while True:  # what stays may observe what would go: shrink the cut to a fixpoint
            gone = {id(o) for o in cut}
            rest = [o for o in window if id(o) not in gone]
            keep = [o for o in model.removable(cut, rest) if o is not last]
            if len(keep) == len(cut):
                break
            cut = keep
        if not cut:
            return False
        cut_ids = {id(o) for o in cut}
        smaller = [o for o in window if id(o) not in cut_ids]
        if fails(smaller):
            window = smaller
            return True
        return False

    # delta debugging: drop big chunks first, then ever smaller ones
    parts = 2
    while len(window) > 1 and time.monotonic() < deadline:
        size = max(1, len(window) // parts)
        chunks = [window[i : i + size] for i in range(0, len(window), size)]
        progress = False
        for chunk in chunks:
            if time.monotonic() >= deadline:
                break
            progress = drop(chunk) or progress
        if progress:
            parts = max(2, parts - 1)
        elif size == 1:
            break
        else:
            parts = min(parts * 2, len(window))
    return tuple(sorted(window, key=lambda o: (o.call, o.id)))


def check(
    ops: Sequence[Operation],
    model: Model,
    *,
    timeout: float | None = None,
    shrink_budget: float = 2.0,
    workers: int | None = None,
    stop_on_failure: bool = True,
) -> Result:
    """Checks a whole history, all keys side by side (:mod:`.parallel`).

    ``timeout`` bounds the whole search (seconds); keys it leaves undecided make the verdict
    "unknown" unless another key already failed. The first failing key stops the rest
    (unless ``stop_on_failure`` is False); its window is shrunk for at most
    ``shrink_budget`` seconds, and never past the timeout.
    """
    t0 = time.monotonic()
    deadline = math.inf if timeout is None else t0 + timeout
    keys: list[str | None] = []
    groups: list[list[Operation]] = []
    for key, key_ops in by_key(ops):
        keys.append(key)
        groups.append(model.prune(key_ops))
    found = search_keys(
        groups, model, deadline=deadline, workers=workers, stop_on_failure=stop_on_failure
    )
    failed = [i for i in sorted(found) if not found[i].linearizable]
    failures: list[KeyFailure] = []
    for n, i in enumerate(failed):
        o = found[i]
        budget = min(shrink_budget, deadline - time.monotonic()) / (len(failed) - n)
        key_ops = groups[i]
        failures.append(
            KeyFailure(
                key=keys[i],
                window=shrink(key_ops, model, budget=max(0.0, budget)),
                longest=tuple(key_ops[j] for j in o.longest),
                stuck=None if o.stuck is None else key_ops[o.stuck],
            )
        )
    undecided = tuple(keys[i] for i in range(len(keys)) if i not in found)
    verdict: Verdict
    if failures:
        verdict = "not-linearizable"
    elif undecided:
        verdict = "unknown"
    else:
        verdict = "linearizable"
    return Result(
        verdict=verdict,
        ops=len(ops),
        keys=len(keys),
        failures=tuple(failures),
        timed_out_keys=() if failures else undecided,
        stopped_keys=undecided if failures else (),
        checked_keys=tuple(keys[i] for i in sorted(found) if found[i].linearizable),
        seconds=time.monotonic() - t0,
        per_key_seconds={keys[i]: o.seconds for i, o in found.items()},
    )
