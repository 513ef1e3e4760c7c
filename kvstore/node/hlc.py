"""The node's hybrid logical clock and each group's causal time (docs/sharding.md).

Rules this module keeps:
- A time is 64 bits: wall-clock milliseconds << 16 | a logical counter (Kulkarni et al.
  2014, as MongoDB's cluster time). ``HybridClock`` never goes back: ``tick(wall)``
  returns ``max(last + 1, wall << 16)`` and ``observe(t)`` raises it to ``t``. It reads
  no clock itself: the node passes its wall clock in, the simulation its own.
- The node observes every stamp it persists or applies and every token a client sends,
  so a leader stamps each entry above everything in its log (also after a restart or a
  leader change: it observed the log it had) and above what the writer had seen.
  Correctness does not rest on this: the state machine gives each entry the time
  ``max(stamp, applied time + 1)`` (statemachine/apply.py), so a slow or skewed clock
  only makes causal reads wait, never serves them early.
- A time from outside (a client's token, a follower's TIME_REQUEST) is taken only when
  ``acceptable``: at most MAX_AHEAD_MS ahead of this node's wall clock, or not above
  what the clock already saw. The cluster hands out no later time (a leader stamps from
  its own wall clock), and one far-future token observed would raise every later stamp
  with it: near 2**64 the next stamp no longer fits the entry (every leader that saw it
  in its log stopped on its first write). The bound is against the wall clock, not the
  clock's last time, so repeated tokens cannot walk the clock forward.
- A causal read with token ``t`` waits (bounded by its deadline) for the group's applied
  time to reach ``t``. A group with no writes would never get there, so the replica asks
  for an entry: a leader proposes an empty stamped batch itself; a follower sends its
  leader a TIME_REQUEST (at most one per group every ASK_AGAIN_S unless for a later time).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvstore.consensus.types import Entry, EntryType
from kvstore.statemachine.commands import entry_stamp

LOGICAL_BITS = 16
LOG_SCAN = 64
"""How far back from its last entry a restarting node looks for its log's last stamp
(a new leader's term-start entries, conf changes and admin commands carry none)."""
MAX_AHEAD_MS = 366 * 24 * 3600 * 1000
"""How far ahead of the wall clock an outside time may be (as MongoDB's
maxAcceptableLogicalClockDriftSecs, one year): far above any real clock skew, far
below the 48-bit millisecond field's end (year 10889)."""
ASK_AGAIN_S = 0.2
"""A follower repeats a request for the same time after this long (a lost message, a
leader that changed)."""


def pack(ms: int, logical: int = 0) -> int:
    return (ms << LOGICAL_BITS) | logical


def physical_ms(t: int) -> int:
    return t >> LOGICAL_BITS


class HybridClock:
    __slots__ = ("last",)

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def tick(self, wall_ms: int) -> int:
        """A new time for a local event (a proposal): above every time seen so far."""
        self.last = max(self.last + 1, pack(wall_ms))
        return self.last

    def acceptable(self, t: int, wall_ms: int) -> bool:
        """May an outside time ``t`` be observed (see the module rules)?"""
        return t <= max(self.last, pack(wall_ms + MAX_AHEAD_MS))

    def observe(self, t: int) -> None:
        """A time seen in the log or in a request: later ticks are above it."""
        if t > self.last:
            self.last = t


class _Log(Protocol):
    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> Sequence[Entry]: ...


def log_stamp(glog: _Log) -> int:
    """The highest stamp among the last LOG_SCAN entries of a group's log (0: none)."""
    hi = glog.last_index() + 1
    lo = max(glog.first_index(), hi - LOG_SCAN)
    if lo >= hi:
        return 0
    return max(
        (entry_stamp(e.data) for e in glog.entries(lo, hi) if e.type == EntryType.NORMAL),
        default=0,
    )


@dataclass(slots=True)
class GroupTime:
    """One group's causal time on this node and the reads waiting for it."""

    applied: int = 0
    """The applied time (the time of the last batch entry applied here)."""
    waiters: list[tuple[int, int, Any]] = field(default_factory=list)
    """(time, tie-breaker, pending.Waiter) heap of causal reads."""
    wanted: int = 0
    """Leader: an entry stamped above this is wanted (a causal read waits for it)."""
    proposed: int = 0
    """Leader: the highest stamp this node proposed in the group."""
    asked: int = 0
    asked_at: float = -1e9
    """Follower: the highest time asked of the leader, and when."""

    def due(self) -> list[Any]:
        """Pop the waiters whose time has been reached."""
        out = []
        while self.waiters and self.waiters[0][0] <= self.applied:
            out.append(heapq.heappop(self.waiters)[2])
        return out

    def expire(self, now: float, fail: Callable[[Any, int], None]) -> None:
        """Fail (``fail(waiter, time)``) the waiters past their deadline."""
        if not any(w.deadline <= now for _, _, w in self.waiters):
            return
        keep = []
        for item in self.waiters:
            if item[2].deadline <= now:
                fail(item[2], item[0])
            else:
                keep.append(item)
        heapq.heapify(keep)
        self.waiters = keep

    def should_ask(self, t: int, now: float) -> bool:
        """Follower: whether to send the leader a request for time ``t`` now."""
        if t > self.asked or now - self.asked_at >= ASK_AGAIN_S:
            self.asked = max(self.asked, t)
            self.asked_at = now
            return True
        return False
