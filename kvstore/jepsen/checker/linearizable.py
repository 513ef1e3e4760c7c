"""Linearizability checking: the Wing-Gong search with Lowe's memoization, per key.

As in Knossos and Porcupine: the history of each key is checked on its own (linearizability
is compositional). The calls and returns of a key's operations form a doubly linked list in
time order. The search walks it: at a call it tries to linearize that operation now (the
model must accept it); if it does, the operation and its return are lifted out of the list
and the search restarts from the head. Reaching a return whose call is still in the list
means the order chosen so far cannot be extended: undo the last choice and try the next
candidate. A set of (linearized-operations bitset, model state) pairs already explored
prunes the search (Lowe); bitsets are Python ints.

Operations with an unknown outcome return at infinity, so the search may place them at any
point after their call, including after everything else (which is the same as never).

When a key is not linearizable, :func:`check` shrinks the failure to a small window: the
shortest prefix (in return order) that already fails, then drops operations one by one while
the rest still fails and stays explainable (see ``Model.removable``).
This module performs no I/O.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from kvstore.jepsen.checker.models import Model
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
    seconds: float = 0.0
    per_key_seconds: dict[str | None, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.verdict == "linearizable"


class _Timeout(Exception):
    pass


class _Entry:
    __slots__ = ("match", "next", "op", "prev")

    def __init__(self, op: Operation | None) -> None:
        self.op = op
        self.match: _Entry | None = None  # set on calls: their return entry
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


@dataclass(slots=True)
class _Search:
    linearizable: bool
    longest: list[int]
    stuck: int | None


def _search(ops: Sequence[Operation], model: Model, deadline: float) -> _Search:
    """Runs the search on one key's operations (ids must be 0..len-1 positions)."""
    events: list[tuple[float, int, int]] = []
    for i, o in enumerate(ops):
        events.append((o.call, 0, i))  # calls sort before returns at equal times
        events.append((o.ret, 1, i))
    events.sort()
    head = _Entry(None)
    prev = head
    calls: list[_Entry | None] = [None] * len(ops)
    for _, kind, i in events:
        e = _Entry(ops[i])
        e.prev = prev
        prev.next = e
        prev = e
        if kind == 0:
            calls[i] = e
        else:
            c = calls[i]
            assert c is not None
            c.match = e
    index = {id(o): i for i, o in enumerate(ops)}

    step = model.step
    state: Hashable = model.init()
    linearized = 0
    cache: set[tuple[int, Hashable]] = set()
    stack: list[tuple[_Entry, Hashable]] = []
    longest: list[int] = []
    stuck: int | None = None
    entry = head.next
    counter = 0
    while head.next is not None:
        assert entry is not None
        match = entry.match
        if match is not None:
            op = entry.op
            assert op is not None
            legal, new_state = step(state, op)
            if legal:
                bit = 1 << index[id(op)]
                key = (linearized | bit, new_state)
                if key not in cache:
                    cache.add(key)
                    stack.append((entry, state))
                    state = new_state
                    linearized |= bit
                    # lift the call and its return out of the list
                    p, n = entry.prev, entry.next
                    assert p is not None and n is not None
                    p.next = n
                    n.prev = p
                    p, n = match.prev, match.next
                    assert p is not None
                    p.next = n
                    if n is not None:
                        n.prev = p
                    if len(stack) > len(longest):
                        longest = [index[id(e.op)] for e, _ in stack]
                        stuck = None
                    entry = head.next
                    continue
            entry = entry.next
            continue
        # a return whose call is not linearized: backtrack
        if len(stack) == len(longest) and stuck is None:
            assert entry.op is not None
            stuck = index[id(entry.op)]
        if not stack:
            return _Search(linearizable=False, longest=longest, stuck=stuck)
        counter += 1
        if counter & 0x3FF == 0 and time.monotonic() > deadline:
            raise _Timeout
        entry, state = stack.pop()
        op = entry.op
        assert op is not None
        linearized &= ~(1 << index[id(op)])
        match = entry.match
        assert match is not None
        # unlift: the return first, then the call, mirroring the lift
        p, n = match.prev, match.next
        assert p is not None
        p.next = match
        if n is not None:
            n.prev = match
        p, n = entry.prev, entry.next
        assert p is not None and n is not None
        p.next = entry
        n.prev = entry
        entry = entry.next
    return _Search(linearizable=True, longest=list(range(len(ops))), stuck=None)


def is_linearizable(
    ops: Sequence[Operation], model: Model, *, timeout: float | None = None
) -> bool:
    """One key's history. Raises TimeoutError when the search runs past ``timeout``."""
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    try:
        return _search(model.prune(ops), model, deadline).linearizable
    except _Timeout:
        raise TimeoutError("linearizability search timed out") from None


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
        try:
            return not _search(model.prune(sub), model, deadline).linearizable
        except _Timeout:
            return False

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
) -> Result:
    """Checks a whole history, key by key. ``timeout`` bounds each key's search."""
    t0 = time.monotonic()
    failures: list[KeyFailure] = []
    timed_out: list[str | None] = []
    per_key: dict[str | None, float] = {}
    keys = 0
    for key, all_key_ops in by_key(ops):
        key_ops = model.prune(all_key_ops)
        keys += 1
        k0 = time.monotonic()
        deadline = math.inf if timeout is None else k0 + timeout
        try:
            found = _search(key_ops, model, deadline)
        except _Timeout:
            timed_out.append(key)
            continue
        finally:
            per_key[key] = time.monotonic() - k0
        if not found.linearizable:
            failures.append(
                KeyFailure(
                    key=key,
                    window=shrink(key_ops, model, budget=shrink_budget),
                    longest=tuple(key_ops[i] for i in found.longest),
                    stuck=None if found.stuck is None else key_ops[found.stuck],
                )
            )
    verdict: Verdict
    if failures:
        verdict = "not-linearizable"
    elif timed_out:
        verdict = "unknown"
    else:
        verdict = "linearizable"
    return Result(
        verdict=verdict,
        ops=len(ops),
        keys=keys,
        failures=tuple(failures),
        timed_out_keys=tuple(timed_out),
        seconds=time.monotonic() - t0,
        per_key_seconds=per_key,
    )
