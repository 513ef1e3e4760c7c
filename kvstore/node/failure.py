"""Phi-accrual failure detector (Hayashibara et al.), one per peer.

Rule: it only observes arrival times handed to it and answers with a
suspicion level; it never sends or decides anything itself. Uses the
exponential model of Cassandra: phi = elapsed / (mean interval * ln 10), so
phi = 1 means a 10% chance the peer is still alive and merely late.

Every batch from a peer counts as an arrival, and a loaded peer sends hundreds a
second: measured on a 3-node cluster under a write load, the mean interval fell to
1-3 ms (the old 10 ms floor), so a 0.3 s pause read as death (phi 12). A peer only
promises to speak once per heartbeat interval, so the mean is floored there
(``min_interval`` = the heartbeat period): under load a pause reads as it would on an
idle link, and a dead peer still reaches the dead level in 12 * ln 10 heartbeats.
"""

from __future__ import annotations

import math
from collections import deque

SUSPECT_PHI = 5.0
DEAD_PHI = 12.0


class PhiAccrual:
    def __init__(self, *, window: int = 100, min_interval: float = 0.05) -> None:
        self._intervals: deque[float] = deque(maxlen=window)
        self._total = 0.0
        self._last: float | None = None
        self._min_interval = min_interval

    def heartbeat(self, now: float) -> None:
        if self._last is not None:
            if len(self._intervals) == self._intervals.maxlen:
                self._total -= self._intervals[0]
            gap = max(now - self._last, 0.0)
            self._intervals.append(gap)
            self._total += gap
        self._last = now

    def mean_interval(self) -> float:
        """The mean arrival interval of the window, before the floor (0 when unknown)."""
        n = len(self._intervals)
        return self._total / n if n else 0.0

    def phi(self, now: float) -> float:
        if self._last is None or not self._intervals:
            return 0.0 if self._last is not None else math.inf
        mean = max(self.mean_interval(), self._min_interval)
        return max(now - self._last, 0.0) / (mean * math.log(10))

    def state(self, now: float) -> str:
        if self._last is None:
            return "unknown"
        p = self.phi(now)
        if p < SUSPECT_PHI:
            return "alive"
        return "suspect" if p < DEAD_PHI else "dead"
