"""Sequential specifications for the linearizability checker.

A model is a pure function from (state, operation) to (legal, next state); states are
hashable so that the search can memoize them. An operation with an unknown outcome
(``op.unknown``) is legal in every state: only its effect, if it took effect, matters.
This module performs no I/O.

Models:
- :class:`RegisterModel`: a compare-and-set register (read/write/cas), starting absent (None).
  A cas's output is True (it swapped) or False (the compare failed, nothing changed).
- :class:`StringKVModel`: Porcupine's key-value model, a string register per key starting
  as "" (get/put/append, append concatenates).
- :class:`ListAppendModel`: a list per key starting empty (append x / read -> list).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Hashable, Sequence
from typing import Protocol

from kvstore.jepsen.history import Operation, Value


class Model(Protocol):
    """A sequential object, one instance per key (the checker partitions by key)."""

    name: str

    def init(self) -> Hashable: ...

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]: ...

    def is_read(self, op: Operation) -> bool:
        """True when the operation never changes the state (it may be dropped freely)."""
        ...

    def prune(self, ops: Sequence[Operation]) -> list[Operation]:
        """Drops operations that cannot change the verdict (a search-space cut)."""
        ...

    def grows(self, op: Operation) -> bool:
        """True when the operation only extends the state (an append), never resets it."""
        ...

    def viable(self, state: Hashable, read: Operation) -> bool:
        """False when no sequence of growing operations can take ``state`` to one in which
        ``read`` is legal (e.g. the read saw a list that does not start with this one).

        Lets the search drop an order of appends as soon as a pending read rules it out,
        when no operation that resets the state could still come first.
        """
        ...

    def observer(self, ops: Sequence[Operation]) -> Callable[[Hashable], bool] | None:
        """For models with growing operations: a test of whether any read among ``ops``
        sees the given state or a state grown from it (None: no such test).

        When none does, the state's exact value can never matter: only a reset (which must
        then not look at the state it replaces) leads to anything a read sees again.
        """
        ...

    def removable(self, ops: Sequence[Operation], rest: Sequence[Operation]) -> list[Operation]:
        """Those of ``ops`` that can be dropped while ``rest`` stays, leaving no remaining
        result unexplained.

        Used only to shrink a counterexample: dropping a write whose value someone read
        would turn "this read is stale" into "this read saw a value never written".
        """
        ...


class RegisterModel:
    name = "register"

    def init(self) -> Hashable:
        return None

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        f = op.f
        if f == "read":
            return (op.unknown or op.output == state), state
        if f == "write":
            return True, op.input
        if f == "cas":
            expected, new = op.input
            matches = state == expected
            if op.unknown:
                return True, (new if matches else state)
            return (bool(op.output) == matches), (new if matches else state)
        raise ValueError(f"register model: unknown operation {f!r}")

    def prune(self, ops: Sequence[Operation]) -> list[Operation]:
        # a read whose answer never came constrains nothing
        return [op for op in ops if not (op.unknown and self.is_read(op))]

    def is_read(self, op: Operation) -> bool:
        return op.f == "read" or (op.f == "cas" and op.output is False)

    def grows(self, op: Operation) -> bool:
        return False

    def viable(self, state: Hashable, read: Operation) -> bool:
        return True

    def observer(self, ops: Sequence[Operation]) -> Callable[[Hashable], bool] | None:
        return None

    def removable(self, ops: Sequence[Operation], rest: Sequence[Operation]) -> list[Operation]:
        # a write may go if no remaining op that could have observed it (one returning after
        # the write's call) observes its value, or if a later write of the same value could
        # still come before all of those (keeping the latest source makes the window show
        # the writes that overtook it); a cas (v, v) is no source of v, it needs v there
        seen_at: dict[Value, list[float]] = {}
        made_at: dict[Value, list[float]] = {}
        for o in rest:
            seen = _observes_register(o)
            if seen is not _NOTHING:
                seen_at.setdefault(seen, []).append(o.ret)
            made = _produces_register(o)
            if made is not _NOTHING and seen != made:
                made_at.setdefault(made, []).append(o.call)
        for times in (*seen_at.values(), *made_at.values()):
            times.sort()
        out = []
        for op in ops:
            if self.is_read(op):
                out.append(op)
                continue
            made = _produces_register(op)
            if made == _observes_register(op):
                out.append(op)  # a cas (v, v) only observes
                continue
            rets = seen_at.get(made, [])
            k = bisect.bisect_right(rets, op.call)
            if k == len(rets):
                out.append(op)  # nobody after it observes its value
                continue
            calls = made_at.get(made, [])
            m = bisect.bisect_right(calls, op.call)
            if m < len(calls) and calls[m] < rets[k]:
                out.append(op)  # a later source serves the same observers
        return out


def _observes_register(op: Operation) -> Value:
    if op.f == "read" and not op.unknown:
        return op.output
    if op.f == "cas" and op.output is not False:
        return op.input[0]  # an unknown cas that took effect needed its expected value
    return _NOTHING


def _produces_register(op: Operation) -> Value:
    if op.f == "write":
        return op.input
    if op.f == "cas" and op.output is not False:
        return op.input[1]
    return _NOTHING


_NOTHING = object()


class StringKVModel:
    """Porcupine's kv model for one key: get/put/append on a string starting as ""."""

    name = "string-kv"

    def init(self) -> Hashable:
        return ""

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        f = op.f
        if f == "get":
            return (op.unknown or op.output == state), state
        if f == "put":
            return True, op.input
        if f == "append":
            assert isinstance(state, str)
            return True, state + str(op.input)
        raise ValueError(f"string-kv model: unknown operation {f!r}")

    def prune(self, ops: Sequence[Operation]) -> list[Operation]:
        return [op for op in ops if not (op.unknown and self.is_read(op))]

    def is_read(self, op: Operation) -> bool:
        return op.f == "get"

    def grows(self, op: Operation) -> bool:
        return op.f == "append"

    def viable(self, state: Hashable, read: Operation) -> bool:
        assert isinstance(state, str)
        return read.unknown or str(read.output).startswith(state)

    def observer(self, ops: Sequence[Operation]) -> Callable[[Hashable], bool] | None:
        seen = sorted({str(o.output) for o in ops if o.f == "get" and not o.unknown})

        def observable(state: Hashable) -> bool:
            # the smallest output not below the state starts with it, if any output does
            assert isinstance(state, str)
            i = bisect.bisect_left(seen, state)
            return i < len(seen) and seen[i].startswith(state)

        return observable

    def removable(self, ops: Sequence[Operation], rest: Sequence[Operation]) -> list[Operation]:
        seen = [str(o.output) for o in rest if o.f == "get" and not o.unknown]
        return [op for op in ops if self.is_read(op) or not any(str(op.input) in v for v in seen)]


class ListAppendModel:
    """A list per key: ``append`` adds its input at the end; ``read`` returns the list.

    The state is (length, digest of the elements in order) rather than the list itself, so
    that each step and each memo lookup costs O(1) however long the lists grow; a read's
    output is digested once. Two different lists collide only if their 64-bit digest chains
    do, which a checker run may ignore.
    """

    name = "list-append"

    def __init__(self) -> None:
        self._digests: dict[int, tuple[Operation, tuple[int, int]]] = {}
        self._prefixes: dict[int, tuple[Operation, list[int]]] = {}

    def init(self) -> Hashable:
        return (0, 0)

    @staticmethod
    def digest(values: Sequence[Value]) -> tuple[int, int]:
        h = 0
        for v in values:
            h = hash((h, v))
        return (len(values), h)

    def _read_digest(self, op: Operation) -> tuple[int, int]:
        hit = self._digests.get(id(op))
        if hit is None or hit[0] is not op:
            hit = (op, self.digest(tuple(op.output or ())))
            self._digests[id(op)] = hit
        return hit[1]

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        f = op.f
        if f == "read":
            return (op.unknown or self._read_digest(op) == state), state
        if f == "append":
            assert isinstance(state, tuple)
            length, h = state
            return True, (length + 1, hash((h, op.input)))
        raise ValueError(f"list-append model: unknown operation {f!r}")

    def prune(self, ops: Sequence[Operation]) -> list[Operation]:
        """Also drops unknown appends that no read saw: had one taken effect, every read
        ordered after it would hold it, so it may as well come last, i.e. never."""
        seen: set[Value] = set()
        for op in ops:
            if op.f == "read" and not op.unknown:
                seen.update(op.output or ())
        return [op for op in ops if not (op.unknown and (self.is_read(op) or op.input not in seen))]

    def is_read(self, op: Operation) -> bool:
        return op.f == "read"

    def grows(self, op: Operation) -> bool:
        return op.f == "append"

    def viable(self, state: Hashable, read: Operation) -> bool:
        assert isinstance(state, tuple)
        if read.unknown:
            return True
        length, h = state
        prefixes = self._prefix_digests(read)
        return bool(length < len(prefixes) and prefixes[length] == h)

    def observer(self, ops: Sequence[Operation]) -> Callable[[Hashable], bool] | None:
        prefixes: set[tuple[int, int]] = set()
        for o in ops:
            if o.f == "read" and not o.unknown:
                prefixes.update(enumerate(self._prefix_digests(o)))
        return prefixes.__contains__

    def _prefix_digests(self, op: Operation) -> list[int]:
        """The digest of each prefix of a read's list (index = prefix length)."""
        hit = self._prefixes.get(id(op))
        if hit is None or hit[0] is not op:
            out = [0]
            for v in tuple(op.output or ()):
                out.append(hash((out[-1], v)))
            hit = (op, out)
            self._prefixes[id(op)] = hit
        return hit[1]

    def removable(self, ops: Sequence[Operation], rest: Sequence[Operation]) -> list[Operation]:
        seen: set[Value] = set()
        for o in rest:
            if o.f == "read" and not o.unknown:
                seen.update(o.output or ())
        return [op for op in ops if self.is_read(op) or op.input not in seen]
