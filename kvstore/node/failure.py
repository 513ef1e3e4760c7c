"""Phi-accrual failure detector (Hayashibara et al.), one per peer.

Rule: it only observes arrival times handed to it and answers with a
suspicion level; it never sends or decides anything itself. Uses the
exponential model of Cassandra: phi = elapsed / (mean interval * ln 10), so
phi = 1 means a 10% chance the peer is still alive and merely late.
"""

from __future__ import annotations

import math
from collections import deque

SUSPECT_PHI = 5.0
DEAD_PHI = 12.0


class PhiAccrual:
    def __init__(self, *, window: int = 100, min_interval: float = 0.01) -> None:
        self._intervals: deque[float] = deque(maxlen=window)
        self._last: float | None = None
        self._min_interval = min_interval

    def heartbeat(self, now: float) -> None:
        if self._last is not None:
            self._intervals.append(max(now - self._last, 0.0))
        self._last = now

    def phi(self, now: float) -> float:
        if self._last is None or not self._intervals:
            return 0.0 if self._last is not None else math.inf
        mean = max(sum(self._intervals) / len(self._intervals), self._min_interval)
        return max(now - self._last, 0.0) / (mean * math.log(10))

    def state(self, now: float) -> str:
        if self._last is None:
            return "unknown"
        p = self.phi(now)
        if p < SUSPECT_PHI:
            return "alive"
        return "suspect" if p < DEAD_PHI else "dead"
