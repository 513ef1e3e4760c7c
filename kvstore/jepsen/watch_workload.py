"""The ``watch`` workload: writers put unique values on a few keys under one prefix, and
watchers, overlapping in time and in what they watch, replay the recent history.

A ``write`` puts a value never written before and returns its revision. A ``watch``
writes a unique marker under the prefix (its revision ends the segment), watches the
prefix from ``back`` revisions before it (``AsyncClient.watch``: it resumes on another
node by itself when its stream breaks) and returns ``(start, end, events)``: every event
up to the marker, as ``(shard, revision, key, value)``.

Checked (anomalies make the run invalid):
- each watcher's events are in revision order, with no duplicate, within its segment,
  ending with its marker;
- all watchers agree: two segments that both hold a revision (before their ends, where
  they are complete) hold the same events for it, in the same order;
- no gap: every acknowledged write whose revision lies inside a segment of its shard is
  in that segment, at the revision the write returned;
- nothing invented: every event is a value some writer (or watcher's marker) wrote.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kvstore.jepsen.checker.models import Model
from kvstore.jepsen.history import Event
from kvstore.jepsen.workloads import Invocation, Store

PREFIX = "jepsen-watch/"
MARKER = PREFIX + "marker"
KEYS = [PREFIX + k for k in ("a", "b", "c")]


@dataclass(slots=True)
class WatchWorkload:
    back: int = 40
    """Revisions before its marker a watch starts at (segments overlap)."""
    name: str = "watch"
    model: Model | None = None
    returns: tuple[str, ...] = ("write", "watch")
    """Ops whose ok records the result (the revision, the segment), not the invocation."""
    keys: list[str] = field(default_factory=lambda: list(KEYS))
    _next: int = 0

    def generate(self, worker: int, process: int, rng: random.Random) -> Invocation:
        self._next += 1
        if rng.random() < 0.75:
            return Invocation(f="write", key=rng.choice(KEYS), value=f"{process}-{self._next}")
        return Invocation(f="watch", key=PREFIX, value=f"m{process}-{self._next}")

    async def execute(self, store: Store, inv: Invocation, read_mode: str) -> Any:
        if inv.f == "read":
            got = await store.get(inv.key, "strong")
            return None if got is None else got.decode()
        if inv.f == "write":
            return await store.put(inv.key, str(inv.value))
        client: Any = store  # an AsyncClient: watch is not in the Store slice
        marker = str(inv.value)
        end = int(await client.put(MARKER, marker))
        start = max(1, end - self.back)
        events: list[tuple[int, int, str, str]] = []
        async with client.watch(PREFIX, prefix=True, start_revision=start) as w:
            async for ev in w:
                events.append((ev.shard, ev.revision, ev.key.decode(), ev.value.decode()))
                if ev.key.decode() == MARKER and ev.value.decode() == marker:
                    break
        return (start, end, tuple(events))

    def on_new_process(self, worker: int, process: int) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _Segment:
    process: int
    start: int
    end: int
    events: tuple[tuple[int, int, str, str], ...]

    @property
    def shard(self) -> int:
        return self.events[-1][0] if self.events else 0


def check_watch(events: Sequence[Event]) -> list[str]:
    """The anomalies of a watch history (see the module doc); [] when it is valid."""
    anomalies: list[str] = []
    invoked: dict[str, str] = {}  # value -> key
    written: dict[str, tuple[str, int]] = {}  # value -> (key, revision), acknowledged
    segments: list[_Segment] = []
    for e in events:
        if e.f == "write" and e.type == "invoke":
            invoked[str(e.value)] = str(e.key)
        elif e.f == "watch" and e.type == "invoke":
            invoked[str(e.value)] = MARKER
    pending: dict[int, Any] = {}
    for e in events:
        if e.f not in ("write", "watch"):
            continue
        if e.type == "invoke":
            pending[e.process] = (e.key, e.value)
        elif e.type == "ok":
            key, value = pending.pop(e.process, (None, None))
            if e.f == "write" and value is not None:
                written[str(value)] = (str(key), int(e.value))
            elif e.f == "watch" and e.value is not None:
                start, end, evs = e.value
                segments.append(_Segment(e.process, start, end, tuple(map(tuple, evs))))
    by_rev: dict[tuple[int, int], tuple[tuple[str, str], ...]] = {}
    where: dict[tuple[int, int], int] = {}
    seen_at: dict[str, tuple[int, int]] = {}
    for seg in segments:
        last = (0, 0)
        keys = set()
        for shard, rev, key, value in seg.events:
            if (rev, key, value) in keys:
                anomalies.append(f"watch of process {seg.process}: event {key}={value} twice")
            keys.add((rev, key, value))
            if rev < last[1]:
                anomalies.append(f"watch of process {seg.process}: revision {rev} after {last[1]}")
            if not seg.start <= rev <= seg.end:
                anomalies.append(
                    f"watch of process {seg.process}: revision {rev} outside [{seg.start}, "
                    f"{seg.end}]"
                )
            last = (shard, rev)
            if invoked.get(value) != key:
                anomalies.append(f"event {key}={value} at {rev}: nobody wrote that")
            ack = written.get(value)
            if ack is not None and ack[1] != rev:
                anomalies.append(f"event {key}={value} at {rev}: the write returned {ack[1]}")
            seen_at.setdefault(value, (shard, rev))
        if not seg.events or seg.events[-1][1] != seg.end or seg.events[-1][2] != MARKER:
            anomalies.append(f"watch of process {seg.process} did not end at its marker")
        # Agreement on the complete revisions (the last may go on after the marker).
        per: dict[int, list[tuple[str, str]]] = {}
        for _, rev, key, value in seg.events:
            if rev < seg.end:
                per.setdefault(rev, []).append((key, value))
        for rev in range(seg.start, seg.end):
            got = tuple(per.get(rev, ()))
            k = (seg.shard, rev)
            if k in by_rev and by_rev[k] != got:
                anomalies.append(
                    f"watchers disagree on revision {rev} of shard {seg.shard}: process "
                    f"{where[k]} saw {list(by_rev[k])}, process {seg.process} saw {list(got)}"
                )
            by_rev.setdefault(k, got)
            where.setdefault(k, seg.process)
    for value, (key, rev) in written.items():
        shard = seen_at.get(value, (0, 0))[0]
        for seg in segments:
            covered = seg.start <= rev < seg.end and shard in (0, seg.shard)
            if covered and (key, value) not in [(k, v) for _, r, k, v in seg.events if r == rev]:
                anomalies.append(
                    f"acknowledged write {key}={value} at {rev} missing from the watch "
                    f"of process {seg.process} over [{seg.start}, {seg.end}]"
                )
    return anomalies[:50]


def findings(events: Sequence[Event]) -> dict[str, Any]:
    watches = [e for e in events if e.f == "watch" and e.type == "ok"]
    n = sum(len(e.value[2]) for e in watches if e.value)
    return {"watches": len(watches), "events_watched": n}
