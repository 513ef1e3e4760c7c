"""What a benchmark run does, as plain data: the closed-loop workload and its key space.

Rule this module keeps: a spec that passes `validate()` can be run as is by every target;
everything else is rejected here with a message naming the bad option. No I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

READ_MODES = ("strong", "eventual", "causal")
TARGETS = ("kvstore", "etcd", "null")
KEY_PREFIX = b"bench/"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadSpec:
    """A closed loop: `clients` requests in flight, each issuing the next when one returns."""

    clients: int = 64
    duration_s: float = 10.0
    warmup_s: float = 1.0
    value_size: int = 256
    keys: int = 1000
    read_ratio: float = 0.0
    read_mode: str = "strong"
    seed: int = 1

    def validate(self) -> WorkloadSpec:
        if self.clients < 1:
            raise ValueError(f"--clients must be >= 1, got {self.clients}")
        if not self.duration_s > 0:
            raise ValueError(f"--duration must be > 0 seconds, got {self.duration_s}")
        if self.warmup_s < 0:
            raise ValueError(f"--warmup must be >= 0 seconds, got {self.warmup_s}")
        if self.value_size < 0:
            raise ValueError(f"--value-size must be >= 0 bytes, got {self.value_size}")
        if self.keys < 1:
            raise ValueError(f"--keys must be >= 1, got {self.keys}")
        if not 0.0 <= self.read_ratio <= 1.0:
            raise ValueError(f"--read-ratio must be in [0, 1], got {self.read_ratio}")
        if self.read_mode not in READ_MODES:
            raise ValueError(f"--read-mode must be one of {READ_MODES}, got {self.read_mode!r}")
        return self

    def with_clients(self, clients: int) -> WorkloadSpec:
        return dataclasses.replace(self, clients=clients)

    def describe(self) -> str:
        if self.read_ratio == 0.0:
            kind = "writes"
        elif self.read_ratio == 1.0:
            kind = f"{self.read_mode} reads"
        else:
            kind = f"{self.read_ratio:.0%} {self.read_mode} reads"
        return (
            f"{kind}, {self.clients} clients, {self.value_size} B values, "
            f"{self.keys} keys, {self.duration_s:g}s (+{self.warmup_s:g}s warmup)"
        )


def key_name(i: int) -> bytes:
    """The i-th key of the benchmark key space (fixed width so keys sort by number)."""
    return KEY_PREFIX + b"%08d" % i


def split_clients(clients: int, processes: int) -> list[int]:
    """Concurrency per process: as even as possible, no process with zero clients."""
    if clients < 1 or processes < 1:
        raise ValueError("clients and processes must be >= 1")
    n = min(clients, processes)
    base, extra = divmod(clients, n)
    return [base + (1 if i < extra else 0) for i in range(n)]
