"""Histories: what the clients saw, as events and as paired operations.

A history is a sequence of events. Each client operation is one ``invoke`` event followed by
exactly one completion from the same process: ``ok`` (it took effect, with its result),
``fail`` (it certainly did not take effect) or ``info`` (unknown: it may take effect at any
time after its invocation, or never). An invocation with no completion is also unknown.
Nemesis events (process ``NEMESIS``) mark fault windows; checkers ignore them.

On disk a history is JSON lines, one event a line::

    {"type": "invoke", "process": 3, "f": "write", "key": "k7", "value": 5, "time": 1.25}
    {"type": "ok", "process": 3, "f": "write", "key": "k7", "value": 5, "time": 1.31}

``time`` is seconds since the start of the run (monotonic). Invariant kept by
:func:`pair`: an operation's ``ret`` is ``math.inf`` exactly when its outcome is unknown.
This module performs no I/O except in :func:`read_jsonl` and :func:`write_jsonl`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TextIO

EventType = Literal["invoke", "ok", "fail", "info"]
EVENT_TYPES: frozenset[str] = frozenset({"invoke", "ok", "fail", "info"})
NEMESIS = -1
"""The process number of nemesis events."""

Value = Any
"""A JSON value as read back: None, bool, int, str, or a tuple of values (lists become tuples
so that values can be hashed into model states)."""


class HistoryError(ValueError):
    """A history that cannot be read or does not follow the invoke/complete discipline."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One line of a history."""

    type: EventType
    process: int
    f: str
    key: str | None = None
    value: Value = None
    time: float = 0.0
    error: str | None = None

    def to_json(self) -> str:
        d: dict[str, Any] = {
            "type": self.type,
            "process": self.process,
            "f": self.f,
            "key": self.key,
            "value": _to_jsonable(self.value),
            "time": round(self.time, 6),
        }
        if self.error is not None:
            d["error"] = self.error
        return json.dumps(d, separators=(",", ":"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """An invocation paired with its completion; what the checkers consume.

    ``input`` is the invocation's value, ``output`` the completion's (None when unknown).
    ``unknown`` is True for info completions and for invocations that never completed;
    then ``ret`` is ``math.inf``.
    """

    id: int
    process: int
    f: str
    key: str | None
    input: Value
    output: Value
    call: float
    ret: float
    unknown: bool = False

    def describe(self) -> str:
        """One line for people: ``p3 cas k7 (1, 2) -> True  [1.250, 1.310]``."""
        key = "" if self.key is None else f" {self.key}"
        arg = "" if self.input is None else f" {self.input!r}"
        out = "?" if self.unknown else repr(self.output)
        end = "inf" if math.isinf(self.ret) else f"{self.ret:.3f}"
        return f"p{self.process} {self.f}{key}{arg} -> {out}  [{self.call:.3f}, {end}]"

    def as_unknown(self) -> Operation:
        """The same operation with its outcome forgotten."""
        return replace(self, output=None, ret=math.inf, unknown=True)


def _to_jsonable(v: Value) -> Any:
    if isinstance(v, tuple | list):
        return [_to_jsonable(x) for x in v]
    return v


def freeze(v: Any) -> Value:
    """Turns JSON lists into tuples, recursively, so values hash."""
    if isinstance(v, list | tuple):
        return tuple(freeze(x) for x in v)
    return v


def pair(events: Iterable[Event]) -> list[Operation]:
    """Pairs invocations with completions. Fails are dropped: they did not happen.

    Raises HistoryError when a process completes an operation it never invoked, or invokes
    a second one while the first is in flight.
    """
    pending: dict[int, tuple[Event, int]] = {}
    ops: list[Operation | None] = []
    for n, ev in enumerate(events):
        if ev.process == NEMESIS:
            continue
        if ev.type == "invoke":
            if ev.process in pending:
                raise HistoryError(
                    f"event {n}: process {ev.process} invokes while an operation is in flight"
                )
            pending[ev.process] = (ev, len(ops))
            ops.append(None)
            continue
        started = pending.pop(ev.process, None)
        if started is None:
            raise HistoryError(f"event {n}: process {ev.process} completes without an invoke")
        inv, slot = started
        if ev.type == "fail":
            continue
        unknown = ev.type == "info"
        ops[slot] = Operation(
            id=slot,
            process=ev.process,
            f=inv.f,
            key=inv.key,
            input=inv.value,
            output=None if unknown else ev.value,
            call=inv.time,
            ret=math.inf if unknown else ev.time,
            unknown=unknown,
        )
    for inv, slot in pending.values():
        ops[slot] = Operation(
            id=slot,
            process=inv.process,
            f=inv.f,
            key=inv.key,
            input=inv.value,
            output=None,
            call=inv.time,
            ret=math.inf,
            unknown=True,
        )
    done = [op for op in ops if op is not None]
    return [replace(op, id=i) for i, op in enumerate(done)]


def event_from_dict(d: Any, where: str) -> Event:
    if not isinstance(d, dict):
        raise HistoryError(f"{where}: expected a JSON object")
    t = d.get("type")
    if t not in EVENT_TYPES:
        raise HistoryError(f"{where}: 'type' must be one of invoke/ok/fail/info, got {t!r}")
    process, f = d.get("process"), d.get("f")
    if not isinstance(process, int) or isinstance(process, bool):
        raise HistoryError(f"{where}: 'process' must be an integer")
    if not isinstance(f, str):
        raise HistoryError(f"{where}: 'f' must be a string")
    key = d.get("key")
    if key is not None and not isinstance(key, str):
        key = json.dumps(key)
    time = d.get("time", 0.0)
    if not isinstance(time, int | float):
        raise HistoryError(f"{where}: 'time' must be a number")
    error = d.get("error")
    return Event(
        type=t,
        process=process,
        f=f,
        key=key,
        value=freeze(d.get("value")),
        time=float(time),
        error=error if isinstance(error, str) else None,
    )


def parse_jsonl(lines: Iterable[str], name: str = "history") -> list[Event]:
    events = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise HistoryError(f"{name}:{n}: not JSON ({e.msg})") from None
        events.append(event_from_dict(d, f"{name}:{n}"))
    return events


def read_jsonl(path: Path) -> list[Event]:
    with path.open(encoding="utf-8") as fh:
        return parse_jsonl(fh, str(path))


def write_jsonl(events: Iterable[Event], out: TextIO) -> None:
    for ev in events:
        out.write(ev.to_json())
        out.write("\n")


def by_key(ops: Sequence[Operation]) -> Iterator[tuple[str | None, list[Operation]]]:
    """Splits operations per key, keeping their order; keys in order of first appearance."""
    groups: dict[str | None, list[Operation]] = {}
    for op in ops:
        groups.setdefault(op.key, []).append(op)
    yield from groups.items()
