"""The simulated network: a seeded, step-clocked message queue with faults.

Invariant: every decision (drop, duplicate, delay, delivery order) comes from the
``random.Random`` passed in, so a run is a pure function of its seed. Partitions
are checked at delivery time, so a message in flight when a partition starts is
lost, as on a real link.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from kvstore.consensus.types import Message


@dataclass(frozen=True, slots=True, kw_only=True)
class NetConfig:
    drop: float = 0.0
    """Probability that a sent message is lost."""
    duplicate: float = 0.0
    """Probability that a sent message is delivered twice (each copy its own delay)."""
    min_delay: int = 1
    max_delay: int = 1
    """Delivery happens a uniform number of steps in [min_delay, max_delay] after send."""


PERFECT = NetConfig()


class Network:
    def __init__(self, rng: random.Random, config: NetConfig = PERFECT) -> None:
        self.rng = rng
        self.config = config
        self._queue: list[tuple[int, int, Message]] = []
        self._seq = 0
        self._cut: set[tuple[int, int]] = set()
        self.stats: Counter[str] = Counter()

    # -- faults -----------------------------------------------------------
    def partition(self, side: Iterable[int], everyone: Iterable[int]) -> None:
        """Cut every link between ``side`` and the rest (both directions)."""
        a = set(side)
        b = set(everyone) - a
        self._cut = {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}

    def heal(self) -> None:
        self._cut = set()

    def connected(self, a: int, b: int) -> bool:
        return (a, b) not in self._cut

    @property
    def partitioned(self) -> bool:
        return bool(self._cut)

    # -- traffic ----------------------------------------------------------
    def send(self, msg: Message, now: int) -> None:
        cfg = self.config
        self.stats["sent"] += 1
        if cfg.drop and self.rng.random() < cfg.drop:
            self.stats["dropped"] += 1
            return
        copies = 2 if cfg.duplicate and self.rng.random() < cfg.duplicate else 1
        if copies == 2:
            self.stats["duplicated"] += 1
        for _ in range(copies):
            delay = cfg.min_delay
            if cfg.max_delay > cfg.min_delay:
                delay = self.rng.randint(cfg.min_delay, cfg.max_delay)
            self._seq += 1
            heapq.heappush(self._queue, (now + delay, self._seq, msg))

    def due(self, now: int) -> list[Message]:
        """Messages whose delivery time has come, in a random order (reordering);
        those crossing a partition are lost."""
        out: list[Message] = []
        q = self._queue
        while q and q[0][0] <= now:
            msg = heapq.heappop(q)[2]
            if (msg.from_, msg.to) in self._cut:
                self.stats["partitioned"] += 1
                continue
            out.append(msg)
        if len(out) > 1:
            self.rng.shuffle(out)
        return out

    def in_flight(self) -> int:
        return len(self._queue)
