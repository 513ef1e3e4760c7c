"""Every acknowledged append is in the final state, once, in real-time order.

Input: the history of the append workload and the final strong read of every key (taken
after the faults healed). Anomalies:
- ``lost-write``: an append acknowledged ok is missing from its key's final list;
- ``duplicate``: an element appears twice in a final list;
- ``phantom``: an element in a final list that no append attempted, or whose append failed
  (a failure reported as definite that took effect after all);
- ``reordered``: append a completed before append b began, yet b precedes a in the list.
This module performs no I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

from kvstore.jepsen.checker.anomaly import Anomaly
from kvstore.jepsen.history import Event, Operation, Value, pair

_SHOWN = 5  # operations listed per anomaly


def check_appends(
    events: Sequence[Event], final: Mapping[str, Value], keys: Sequence[str]
) -> list[Anomaly]:
    ops = pair(events)
    failed = {(ev.key, ev.value) for ev in events if ev.type == "fail" and ev.f == "append"}
    out: list[Anomaly] = []
    for key in keys:
        if key not in final:
            out.append(Anomaly(kind="no-final-read", key=key, message="no final read answered"))
            continue
        lst = tuple(final[key] or ())
        appends = [op for op in ops if op.key == key and op.f == "append"]
        by_value = {op.input: op for op in appends}
        present = set(lst)
        lost = [op for op in appends if not op.unknown and op.input not in present]
        if lost:
            out.append(
                Anomaly(
                    kind="lost-write",
                    key=key,
                    message=f"{len(lost)} acknowledged appends missing from the final list "
                    f"of {len(lst)}: {[op.input for op in lost][:20]}",
                    ops=tuple(lost[:_SHOWN]),
                )
            )
        dups = sorted(v for v, n in Counter(lst).items() if n > 1)
        if dups:
            out.append(
                Anomaly(kind="duplicate", key=key, message=f"appended more than once: {dups[:20]}")
            )
        phantoms = [v for v in lst if v not in by_value]
        if phantoms:
            was_failed = [v for v in phantoms if (key, v) in failed]
            why = f" ({len(was_failed)} reported as failed)" if was_failed else ""
            out.append(
                Anomaly(
                    kind="phantom",
                    key=key,
                    message=f"elements no append produced{why}: {phantoms[:20]}",
                )
            )
        out += _reorders(key, lst, by_value)
    return out


def _reorders(key: str, lst: Sequence[Value], by_value: Mapping[Value, Operation]) -> list[Anomaly]:
    """Sweeps the list from its end, keeping the earliest return among later elements."""
    out: list[Anomaly] = []
    earliest_ret = math.inf
    earliest: Operation | None = None
    for v in reversed(lst):
        op = by_value.get(v)
        if op is None:
            continue
        if earliest is not None and earliest_ret < op.call:
            out.append(
                Anomaly(
                    kind="reordered",
                    key=key,
                    message=f"{earliest.input} completed before {op.input} began, "
                    f"yet comes after it",
                    ops=(earliest, op),
                )
            )
            if len(out) >= _SHOWN:
                break
        if op.ret < earliest_ret:
            earliest_ret, earliest = op.ret, op
    return out
