"""The search for one key: Wing-Gong with Lowe's memoization, resumable, reads first.

As in Knossos and Porcupine: the calls and returns of a key's operations form a doubly linked
list in time order. The search walks it: at a call it tries to linearize that operation now
(the model must accept it); if it does, the call and its return are lifted out of the list
and the walk restarts from the head. Reaching a return whose call is still in the list means
the order chosen so far cannot be extended: undo the last choice and try the next candidate.
A set of (linearized-operations bitset, model state) pairs already entered prunes the search
(Lowe): a pair seen before either failed or is on the current path, and a path only grows
its bitset, so a hit means "fails". Bitsets are Python ints.

Rule this module adds (a dominance argument, sound and complete): an operation that never
changes the state (a read, ``Model.is_read``) and is legal now is linearized at once, before
any other candidate, and that choice is never revisited. Any linearization that places the
read later can move it here: the state it sees is the same, and every operation placed
between was still in flight when the read was called, so real-time order still holds. So
if the configuration with the read fails, the one without it fails too. This removes the
branching on reads, which is most of the search space when many clients read concurrently.

The walk runs in slices (:meth:`KeySearch.run` takes a deadline and may be called again),
so one process can interleave many keys and stop on the first failure, and a caller can give
up at any time with "unknown". The memo is cleared when it outgrows its limit: the memo
only prunes, so this costs time, never correctness.
This module performs no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence

from kvstore.jepsen.checker.models import Model
from kvstore.jepsen.history import Operation

MEMO_LIMIT = 3_000_000
"""Memo entries kept before the memo is dropped (about 0.5 GB of Python tuples)."""

_GUARD_SCAN = 256  # list entries a guard looks through for a pending read
DEAD: Hashable = object()
"""The state that stands for every state no read of the key can see, nor any state grown
from it: such states only differ in ways nothing will ever observe (the next reset makes
them equal), so the memo treats them as one. This collapses the orders of appends that a
later put overwrote before anyone read them, which is otherwise factorial."""

_CHECK_EVERY = 0x3FF  # loop iterations between clock reads
# how a choice on the stack was made: a read taken by dominance (never revisited), the
# operation returning first (tried before the others), or the list walk
_FORCED, _FIRST, _LISTED = 0, 1, 2


class _Entry:
    __slots__ = ("bit", "call", "index", "match", "next", "op", "prev", "read")

    def __init__(self, op: Operation | None, index: int, read: bool) -> None:
        self.op = op
        self.index = index
        self.bit = 1 << index if index >= 0 else 0
        self.read = read
        self.match: _Entry | None = None  # set on calls: their return entry
        self.call: _Entry | None = None  # set on returns: their call entry
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _lift(entry: _Entry) -> None:
    match = entry.match
    assert match is not None
    p, n = entry.prev, entry.next
    assert p is not None and n is not None  # a call is always followed by its return
    p.next = n
    n.prev = p
    p, n = match.prev, match.next
    assert p is not None
    p.next = n
    if n is not None:
        n.prev = p


def _unlift(entry: _Entry) -> None:
    # the return first, then the call: the mirror image of _lift
    match = entry.match
    assert match is not None
    p, n = match.prev, match.next
    assert p is not None
    p.next = match
    if n is not None:
        n.prev = match
    p, n = entry.prev, entry.next
    assert p is not None and n is not None
    p.next = entry
    n.prev = entry


class KeySearch:
    """The search over one key's operations; ``run`` until ``done``.

    After ``done``: ``linearizable``; ``longest`` (indices into ``ops`` of the longest
    linearizable sequence found, in order) and ``stuck`` (index of the first operation whose
    return that sequence could not pass) explain a failure. ``explored`` counts configurations.
    """

    def __init__(self, ops: Sequence[Operation], model: Model) -> None:
        self.ops = list(ops)
        self.model = model
        self.done = False
        self.linearizable = False
        self.longest: list[int] = []
        self.stuck: int | None = None
        self.explored = 0
        self.seconds = 0.0
        events: list[tuple[float, int, int]] = []
        for i, o in enumerate(self.ops):
            events.append((o.call, 0, i))  # calls sort before returns at equal times
            events.append((o.ret, 1, i))
        events.sort()
        self._head = _Entry(None, -1, False)
        prev = self._head
        calls: list[_Entry | None] = [None] * len(self.ops)
        for _, kind, i in events:
            op = self.ops[i]
            e = _Entry(op, i, model.is_read(op))
            e.prev = prev
            prev.next = e
            prev = e
            if kind == 0:
                calls[i] = e
            else:
                c = calls[i]
                assert c is not None
                c.match = e
                e.call = c
        self._state: Hashable = model.init()
        self._linearized = 0
        self._cache: set[tuple[int, Hashable]] = set()
        # (call entry, state before it, how chosen, skip and guard of the configuration)
        self._stack: list[tuple[_Entry, Hashable, int, _Entry | None, Operation | None]] = []
        self._skip: _Entry | None = None
        self._entry: _Entry | None = self._head.next
        self._reads_only = True
        self._guard_read: Operation | None = None
        self._grows = any(model.grows(o) for o in self.ops)
        self._observable = model.observer(self.ops) if self._grows else None
        if self._entry is None:
            self._finish(True)

    def _finish(self, linearizable: bool) -> None:
        self.done = True
        self.linearizable = linearizable
        if linearizable:
            self.longest = [e[0].index for e in self._stack]
            self.stuck = None
        self._cache = set()

    def _guard(self, frontier: _Entry | None, state: Hashable) -> Operation | None:
        """The read that must come next if only appends can come before it, else None.

        ``frontier`` is the first return in the list (found here when None). When it is a
        read's and no call before it resets the state, every order of appends tried from now
        on must keep that read reachable (``Model.viable``).
        """
        if not self._grows:
            return None
        resets: list[Operation] = []
        e = self._head.next
        # the first pending read's return: only calls before it can come before that read
        # (looked for among the first entries only, so that this costs O(concurrency))
        budget = _GUARD_SCAN
        while e is not None and not (e.match is None and e.read and not e.op.unknown):  # type: ignore[union-attr]
            if e.match is not None and not e.read and not self.model.grows(e.op):  # type: ignore[arg-type]
                resets.append(e.op)  # type: ignore[arg-type]
            e = e.next
            budget -= 1
            if budget == 0:
                return None
        if e is None:
            return None
        read = e.op
        assert read is not None
        for op in resets:
            # a reset (a put) sets the state whatever it was: could it restart the way there?
            legal, after = self.model.step(state, op)
            if legal and after is not DEAD and self.model.viable(after, read):
                return None
        return read

    def run(self, deadline: float) -> bool:
        """Searches until decided (returns True) or until ``deadline`` (returns False)."""
        if self.done:
            return True
        t0 = time.monotonic()
        try:
            return self._run(deadline)
        finally:
            self.seconds += time.monotonic() - t0

    def _run(self, deadline: float) -> bool:
        head = self._head
        step = self.model.step
        state = self._state
        linearized = self._linearized
        cache = self._cache
        stack = self._stack
        entry = self._entry
        reads_only = self._reads_only
        guard = self._guard_read
        skip = self._skip
        viable = self.model.viable
        grows = self.model.grows
        observable = self._observable
        longest_len = len(self.longest)
        counter = 0
        while head.next is not None:
            counter += 1
            if counter & _CHECK_EVERY == 0:
                if time.monotonic() > deadline:
                    self._state, self._linearized, self._entry = state, linearized, entry
                    self._reads_only, self._guard_read, self._skip = reads_only, guard, skip
                    self.explored += counter
                    return False
                if len(cache) > MEMO_LIMIT:
                    cache.clear()
            assert entry is not None
            kind = _LISTED
            if entry.match is None and reads_only:
                # no legal read left before the first pending return: now the rest, starting
                # with the operation that returns first (the likeliest to come next)
                reads_only = False
                guard = self._guard(entry, state)
                if guard is not None and (state is DEAD or not viable(state, guard)):
                    entry = None  # appends alone can never make that read legal: backtrack
                else:
                    first = entry.call
                    assert first is not None
                    if first.read:  # not legal (phase one would have taken it)
                        skip, entry = None, head.next
                    else:
                        skip, entry, kind = first, first, _FIRST
            if entry is not None and entry.match is not None:  # a call
                if entry.read is not reads_only or (kind == _LISTED and entry is skip):
                    # first reads only; then only the rest (no read is legal and new by then)
                    entry = entry.next
                    continue
                op = entry.op
                assert op is not None
                if state is DEAD and entry.read:
                    legal, new_state = op.unknown, DEAD  # a read sees a state someone reads
                elif state is DEAD and grows(op):
                    legal, new_state = True, DEAD
                else:
                    legal, new_state = step(state, op)
                    if observable is not None and not entry.read and not observable(new_state):
                        new_state = DEAD
                if legal and (
                    guard is None or (new_state is not DEAD and viable(new_state, guard))
                ):
                    key = (linearized | entry.bit, new_state)
                    if key not in cache:
                        cache.add(key)
                        if entry.read:
                            kind = _FORCED
                        stack.append((entry, state, kind, skip, guard))
                        state = new_state
                        linearized |= entry.bit
                        _lift(entry)
                        if len(stack) > longest_len:
                            self.longest = [e[0].index for e in stack]
                            longest_len = len(stack)
                            self.stuck = None
                        entry = head.next
                        reads_only = True
                        guard = None
                        skip = None
                        continue
                    # a legal read whose configuration already failed: this one fails too
                    if not entry.read:
                        entry = entry.next if kind == _LISTED else head.next
                        continue
                else:
                    entry = entry.next if kind == _LISTED else head.next
                    continue
            elif entry is not None and len(stack) == longest_len and self.stuck is None:
                assert entry.op is not None
                self.stuck = entry.index
            # backtrack: undo forced reads, then the last free choice, and try the next one
            while True:
                if not stack:
                    self.explored += counter
                    self._finish(False)
                    return True
                top, state, kind, skip, guard = stack.pop()
                linearized &= ~top.bit
                _unlift(top)
                if kind != _FORCED:
                    break
            reads_only = False
            if kind == _FIRST:
                skip = top
                entry = head.next
            else:
                entry = top.next
        self.explored += counter
        self._finish(True)
        return True


def search(ops: Sequence[Operation], model: Model, deadline: float) -> KeySearch | None:
    """Runs one key's search to the end, or returns None at ``deadline``."""
    s = KeySearch(ops, model)
    return s if s.run(deadline) else None
