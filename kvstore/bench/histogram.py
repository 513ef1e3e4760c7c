"""A mergeable latency histogram with bounded relative error.

Rule this module keeps: a recorded value is never lost and never moved by more than one
part in 128 (values below 128 microseconds are exact), so percentiles read from merged
histograms of many processes equal those of one histogram of all the samples. It performs
no I/O. The bucket layout is the log-linear one of HdrHistogram: 128 linear sub-buckets
per power of two.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

SUB_BUCKET_BITS = 7
SUB_BUCKETS = 1 << SUB_BUCKET_BITS  # 128: relative error at most 1/128
# 2**31 microseconds is about 36 minutes: anything slower is clamped to the last bucket.
MAX_VALUE_US = (1 << 31) - 1
BUCKET_COUNT = SUB_BUCKETS * (31 - SUB_BUCKET_BITS) + SUB_BUCKETS


def bucket_index(value_us: int) -> int:
    """The bucket that holds `value_us` (clamped to [0, MAX_VALUE_US])."""
    v = min(max(value_us, 0), MAX_VALUE_US)
    if v < SUB_BUCKETS:
        return v
    shift = v.bit_length() - SUB_BUCKET_BITS - 1
    return SUB_BUCKETS * (shift + 1) + (v >> shift) - SUB_BUCKETS


def bucket_bounds(index: int) -> tuple[int, int]:
    """The smallest and largest value (microseconds) that fall in bucket `index`."""
    if index < 0 or index >= BUCKET_COUNT:
        raise ValueError(f"bucket index {index} outside [0, {BUCKET_COUNT})")
    if index < SUB_BUCKETS:
        return index, index
    shift = index // SUB_BUCKETS - 1
    mantissa = index % SUB_BUCKETS + SUB_BUCKETS
    return mantissa << shift, ((mantissa + 1) << shift) - 1


class Histogram:
    """Counts of latencies in microseconds; `merge` adds another histogram's counts."""

    __slots__ = ("_counts", "count", "max_us", "min_us", "total_us")

    def __init__(self) -> None:
        self._counts = [0] * BUCKET_COUNT
        self.count = 0
        self.total_us = 0
        self.min_us = 0
        self.max_us = 0

    def record(self, value_us: int) -> None:
        v = min(max(value_us, 0), MAX_VALUE_US)
        self._counts[bucket_index(v)] += 1
        if self.count == 0 or v < self.min_us:
            self.min_us = v
        if v > self.max_us:
            self.max_us = v
        self.count += 1
        self.total_us += v

    def record_many(self, values_us: Iterable[int]) -> None:
        for v in values_us:
            self.record(v)

    def merge(self, other: Histogram) -> None:
        if other.count == 0:
            return
        counts = self._counts
        for i, c in enumerate(other._counts):
            if c:
                counts[i] += c
        self.min_us = other.min_us if self.count == 0 else min(self.min_us, other.min_us)
        self.max_us = max(self.max_us, other.max_us)
        self.count += other.count
        self.total_us += other.total_us

    def percentile_us(self, q: float) -> int:
        """Nearest-rank percentile: the smallest value v with at least q% of samples <= v.

        Returns the upper bound of the bucket that holds it (never above the recorded
        maximum), so a reported percentile is never better than the truth. 0 when empty.
        """
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile {q} outside [0, 100]")
        if self.count == 0:
            return 0
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for i, c in enumerate(self._counts):
            seen += c
            if seen >= rank:
                return max(self.min_us, min(bucket_bounds(i)[1], self.max_us))
        return self.max_us  # unreachable: the counts add up to self.count

    def mean_us(self) -> float:
        return self.total_us / self.count if self.count else 0.0

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready sparse form; `from_dict` restores it exactly."""
        return {
            "count": self.count,
            "total_us": self.total_us,
            "min_us": self.min_us,
            "max_us": self.max_us,
            "buckets": {str(i): c for i, c in enumerate(self._counts) if c},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Histogram:
        h = cls()
        buckets = data.get("buckets", {})
        if not isinstance(buckets, Mapping):
            raise ValueError("histogram 'buckets' must be a mapping of index to count")
        for key, c in buckets.items():
            i = int(key)
            if not 0 <= i < BUCKET_COUNT or not isinstance(c, int) or c < 0:
                raise ValueError(f"bad histogram bucket {key!r}: {c!r}")
            h._counts[i] = c
        h.count = _int_field(data, "count")
        h.total_us = _int_field(data, "total_us")
        h.min_us = _int_field(data, "min_us")
        h.max_us = _int_field(data, "max_us")
        if sum(h._counts) != h.count:
            raise ValueError("histogram bucket counts do not add up to its count")
        return h


def _int_field(data: Mapping[str, object], name: str) -> int:
    v = data.get(name, 0)
    if not isinstance(v, int):
        raise ValueError(f"histogram field {name!r} must be an integer, got {v!r}")
    return v
