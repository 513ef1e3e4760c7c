"""The log time a leader stamps into its entries (``time_ms``: session expiry).

Rule: a leader stamps ``base + (now - start)``, where ``start`` is its monotonic clock
when it first stamped in its term and ``base`` the latest log time it knew then (its
group's applied log clock, or the latest ``time_ms`` in its log). No wall clock is read:
a leader whose clock is minutes ahead, or jumps, cannot move log time and expire every
client session (statemachine/apply.py keeps log time = the highest ``time_ms`` applied,
never back). Log time advances at the pace of the leaders' monotonic clocks; the time
between one leader's last stamp and the next leader's first is not counted, so a session
may live a little longer than its idle bound across a leader change, never shorter.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class LogClock:
    """One group's log time on this node."""

    seen_ms: int = 0
    """The latest log time this node knows for the group: applied, or in its log."""
    term: int = -1
    """The term the base below was taken in (-1: none yet)."""
    base_ms: int = 0
    start: float = 0.0

    def observe(self, t_ms: int) -> None:
        """A log time applied or persisted here."""
        if t_ms > self.seen_ms:
            self.seen_ms = t_ms

    def stamp(self, term: int, now: float) -> int:
        """The ``time_ms`` of an entry a leader of ``term`` proposes at monotonic ``now``
        (seconds)."""
        if term != self.term:
            self.term, self.base_ms, self.start = term, self.seen_ms, now
        return self.base_ms + max(0, int((now - self.start) * 1000))
