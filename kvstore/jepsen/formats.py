"""Readers for the history formats the checker accepts, each read as it is.

- ``jepsen-log``: Jepsen's etcd logs (as in Porcupine's test data): one event a line,
  ``INFO  jepsen.util - <process>\\t:<type>\\t:<f>\\t<value>``, one cas register. A ``:fail``
  cas is a cas whose compare failed (output False), as Porcupine reads it.
- ``jepsen-kv``: EDN-like maps, ``{:process 0, :type :invoke, :f :get, :key "k", :value nil}``,
  string registers per key starting as "" (Porcupine's kv model).
- ``jsonl``: our own histories (see :mod:`kvstore.jepsen.history`).

Event times in the two Jepsen formats are line numbers: only their order matters.
Invariant: a reader either returns a complete history or raises HistoryError naming the
file and line; it never returns a partial one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kvstore.jepsen.checker.models import ListAppendModel, Model, RegisterModel, StringKVModel
from kvstore.jepsen.history import Event, EventType, HistoryError, Value, parse_jsonl

Format = Literal["jepsen-log", "jepsen-kv", "jsonl"]
FORMATS: tuple[str, ...] = ("auto", "jepsen-log", "jepsen-kv", "jsonl")


@dataclass(frozen=True, slots=True, kw_only=True)
class Loaded:
    format: Format
    events: list[Event]
    model: Model


_LOG_LINE = re.compile(
    r"jepsen\.util\s+-\s+(\d+)\s+:(invoke|ok|fail|info)\s+:(read|write|cas)\s+(.*?)\s*$"
)
_KV_FIELD = re.compile(r':(\w+)\s+("(?:[^"\\]|\\.)*"|[^,}\s]+)')


def _log_value(text: str, where: str) -> Value:
    if text == "nil" or text.startswith(":"):
        return None  # ":timed-out" on info lines carries no value
    if text.startswith("["):
        parts = text.strip("[]").split()
        try:
            return tuple(None if p == "nil" else int(p) for p in parts)
        except ValueError:
            raise HistoryError(f"{where}: bad value {text!r}") from None
    try:
        return int(text)
    except ValueError:
        raise HistoryError(f"{where}: bad value {text!r}") from None


def parse_jepsen_log(lines: Sequence[str], name: str) -> list[Event]:
    events: list[Event] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        m = _LOG_LINE.search(line)
        if m is None:
            raise HistoryError(f"{name}:{n}: not a Jepsen register log line: {line.strip()!r}")
        process, t, f, raw = int(m[1]), m[2], m[3], m[4]
        where = f"{name}:{n}"
        value = _log_value(raw, where)
        etype: EventType = "ok" if t == "fail" and f == "cas" else t  # type: ignore[assignment]
        if f == "cas" and t in ("ok", "fail"):
            value = t == "ok"
        if f == "cas" and t == "invoke" and (not isinstance(value, tuple) or len(value) != 2):
            raise HistoryError(f"{where}: cas needs [expected new], got {raw!r}")
        events.append(Event(type=etype, process=process, f=f, value=value, time=float(n)))
    return events


def _edn_scalar(text: str, where: str) -> Value:
    if text == "nil":
        return None
    if text.startswith('"'):
        try:
            s = json.loads(text)
        except json.JSONDecodeError:
            raise HistoryError(f"{where}: bad string {text!r}") from None
        assert isinstance(s, str)
        return s
    if text.startswith(":"):
        return text[1:]
    try:
        return int(text)
    except ValueError:
        raise HistoryError(f"{where}: bad value {text!r}") from None


def parse_jepsen_kv(lines: Sequence[str], name: str) -> list[Event]:
    events: list[Event] = []
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s:
            continue
        where = f"{name}:{n}"
        if not (s.startswith("{") and s.endswith("}")):
            raise HistoryError(f"{where}: not an EDN map: {s[:60]!r}")
        fields = {k: _edn_scalar(v, where) for k, v in _KV_FIELD.findall(s)}
        t, f, process = fields.get("type"), fields.get("f"), fields.get("process")
        if t not in ("invoke", "ok", "fail", "info") or not isinstance(f, str):
            raise HistoryError(f"{where}: needs :type and :f")
        if not isinstance(process, int):
            raise HistoryError(f"{where}: needs an integer :process")
        value = fields.get("value")
        if f == "get" and t == "ok" and value is None:
            value = ""
        key = fields.get("key")
        events.append(
            Event(
                type=t,
                process=process,
                f=f,
                key=None if key is None else str(key),
                value=value,
                time=float(n),
            )
        )
    return events


def model_for(events: Sequence[Event]) -> Model:
    """The model a jsonl history was recorded for, from its operation names."""
    fs = {ev.f for ev in events if ev.process >= 0}
    if fs & {"get", "put"}:
        return StringKVModel()
    if "append" in fs:
        return ListAppendModel()
    return RegisterModel()


def sniff(first_lines: Sequence[str]) -> Format:
    for line in first_lines:
        s = line.strip()
        if not s:
            continue
        if "jepsen.util" in s:
            return "jepsen-log"
        if s.startswith("{:") or s.startswith("{ :"):
            return "jepsen-kv"
        if s.startswith("{"):
            return "jsonl"
        break
    raise HistoryError("cannot tell the history format; pass --format")


def load(path: Path, fmt: str = "auto") -> Loaded:
    """Reads a history file. Raises HistoryError (bad content) or OSError (unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HistoryError(f"{path}: not UTF-8 text") from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise HistoryError(f"{path}: empty history")
    chosen: Format = sniff(lines[:20]) if fmt == "auto" else fmt  # type: ignore[assignment]
    name = str(path)
    if chosen == "jepsen-log":
        return Loaded(format=chosen, events=parse_jepsen_log(lines, name), model=RegisterModel())
    if chosen == "jepsen-kv":
        return Loaded(format=chosen, events=parse_jepsen_kv(lines, name), model=StringKVModel())
    if chosen == "jsonl":
        events = parse_jsonl(lines, name)
        return Loaded(format=chosen, events=events, model=model_for(events))
    raise HistoryError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
