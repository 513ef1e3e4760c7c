"""The log time a leader stamps into its entries (``time_ms``: session expiry).

Rule: a leader stamps ``base + (now - start)``, where ``start`` is its monotonic clock
when it took ``base``, the group's APPLIED log time then: when it first stamps in its
term, and again whenever the applied log time has passed its stamps (entries of an
earlier leader applied after its term began). No wall
clock is read: a leader whose clock is minutes ahead, or jumps, cannot move log time and
expire every client session (statemachine/apply.py keeps log time = the highest
``time_ms`` applied, never back). Log time advances at the pace of the leaders' monotonic
clocks; the time between one leader's last stamp and the next leader's first is not
counted, so a session may live a little longer than its idle bound across a leader
change, never shorter.

Only applied log time is a base, never a ``time_ms`` merely seen in the log: an entry
that never commits (a deposed leader's, truncated later) may carry a time far past the
group's log time (its leader stayed leader through an idle hour the group's log time
did not count, after an earlier leader change), and a later term based on it made log
time leap by that much, expiring, or forgetting, every live session at once: a
forgotten session's retry applies a second time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class LogClock:
    """One group's log time on this node."""

    seen_ms: int = 0
    """The latest applied log time this node knows for the group."""
    term: int = -1
    """The term the base below was taken in (-1: none yet)."""
    base_ms: int = 0
    start: float = 0.0

    def observe(self, t_ms: int) -> None:
        """A log time applied here (never one only stored in the log)."""
        if t_ms > self.seen_ms:
            self.seen_ms = t_ms

    def stamp(self, term: int, now: float) -> int:
        """The ``time_ms`` of an entry a leader of ``term`` proposes at monotonic ``now``
        (seconds)."""
        if term != self.term or self.seen_ms > self._at(now):
            self.term, self.base_ms, self.start = term, self.seen_ms, now
        return self._at(now)

    def _at(self, now: float) -> int:
        return self.base_ms + max(0, int((now - self.start) * 1000))
