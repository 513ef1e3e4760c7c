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

from collections.abc import Hashable, Sequence
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

    def removable(self, op: Operation, rest: Sequence[Operation]) -> bool:
        """True when dropping ``op`` leaves no remaining result unexplained.

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

    def is_read(self, op: Operation) -> bool:
        return op.f == "read" or (op.f == "cas" and op.output is False)

    def removable(self, op: Operation, rest: Sequence[Operation]) -> bool:
        if self.is_read(op):
            return True
        produced = _produces_register(op)
        others = [o for o in rest if o is not op]
        if not any(_observes_register(o) == produced for o in others):
            return True
        # another source of the same value keeps its readers explained; a cas (v, v) is no
        # source of v, it needs v already there
        return any(
            _produces_register(o) == produced and _observes_register(o) != produced for o in others
        )


def _produces_register(op: Operation) -> Value:
    if op.f == "write":
        return op.input
    if op.f == "cas" and op.output is not False:
        return op.input[1]
    return _NOTHING


def _observes_register(op: Operation) -> Value:
    if op.f == "read" and not op.unknown:
        return op.output
    if op.f == "cas" and op.output is not False:
        return op.input[0]  # an unknown cas that took effect needed its expected value
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

    def is_read(self, op: Operation) -> bool:
        return op.f == "get"

    def removable(self, op: Operation, rest: Sequence[Operation]) -> bool:
        if self.is_read(op):
            return True
        v = str(op.input)
        return not any(o.f == "get" and not o.unknown and v in str(o.output) for o in rest)


class ListAppendModel:
    """A list per key: ``append`` adds its input at the end; ``read`` returns the list."""

    name = "list-append"

    def init(self) -> Hashable:
        return ()

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        f = op.f
        assert isinstance(state, tuple)
        if f == "read":
            return (op.unknown or tuple(op.output or ()) == state), state
        if f == "append":
            return True, (*state, op.input)
        raise ValueError(f"list-append model: unknown operation {f!r}")

    def is_read(self, op: Operation) -> bool:
        return op.f == "read"

    def removable(self, op: Operation, rest: Sequence[Operation]) -> bool:
        if self.is_read(op):
            return True
        return not any(o.f == "read" and op.input in (o.output or ()) for o in rest)


MODELS: dict[str, type[RegisterModel] | type[StringKVModel] | type[ListAppendModel]] = {
    "register": RegisterModel,
    "string-kv": StringKVModel,
    "list-append": ListAppendModel,
}
