"""The latency histogram: exact below 128 us, within 1/128 above, mergeable, serializable."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.bench.histogram import (
    BUCKET_COUNT,
    MAX_VALUE_US,
    Histogram,
    bucket_bounds,
    bucket_index,
)

values = st.integers(min_value=0, max_value=MAX_VALUE_US)


def naive_percentile(samples: list[int], q: float) -> int:
    s = sorted(samples)
    return s[max(1, math.ceil(q / 100.0 * len(s))) - 1]


def test_buckets_tile_the_value_range_without_gaps() -> None:
    prev_high = -1
    for i in range(BUCKET_COUNT):
        low, high = bucket_bounds(i)
        assert low == prev_high + 1
        prev_high = high
    assert prev_high == MAX_VALUE_US


@given(values)
def test_value_lands_in_a_bucket_that_holds_it_within_one_128th(v: int) -> None:
    low, high = bucket_bounds(bucket_index(v))
    assert low <= v <= high
    assert high - low <= max(0, low // 128)


def test_out_of_range_values_are_clamped_not_lost() -> None:
    h = Histogram()
    h.record(-5)
    h.record(MAX_VALUE_US * 4)
    assert h.count == 2
    assert h.min_us == 0
    assert h.max_us == MAX_VALUE_US


def test_small_values_give_exact_percentiles() -> None:
    h = Histogram()
    h.record_many(range(1, 101))
    assert h.percentile_us(50) == 50
    assert h.percentile_us(99) == 99
    assert h.percentile_us(99.9) == 100
    assert h.percentile_us(100) == 100
    assert h.percentile_us(0) == 1
    assert h.mean_us() == 50.5


def test_empty_histogram_reports_zero() -> None:
    h = Histogram()
    assert h.percentile_us(99) == 0
    assert h.mean_us() == 0.0


def test_percentile_outside_0_100_is_rejected() -> None:
    with pytest.raises(ValueError, match="outside"):
        Histogram().percentile_us(101)


@given(st.lists(values, min_size=1, max_size=300), st.sampled_from([50.0, 90.0, 99.0, 99.9]))
def test_percentile_is_never_below_the_truth_and_within_one_128th(
    samples: list[int], q: float
) -> None:
    h = Histogram()
    h.record_many(samples)
    truth = naive_percentile(samples, q)
    got = h.percentile_us(q)
    assert truth <= got <= truth + truth // 128 + 1
    assert got <= max(samples)


@given(st.lists(values, max_size=100), st.lists(values, max_size=100))
def test_merging_equals_recording_everything_in_one(a: list[int], b: list[int]) -> None:
    ha, hb, hall = Histogram(), Histogram(), Histogram()
    ha.record_many(a)
    hb.record_many(b)
    hall.record_many(a + b)
    ha.merge(hb)
    assert ha.to_dict() == hall.to_dict()


@given(st.lists(values, max_size=100))
def test_dict_round_trip_is_exact(samples: list[int]) -> None:
    h = Histogram()
    h.record_many(samples)
    assert Histogram.from_dict(h.to_dict()).to_dict() == h.to_dict()


def test_from_dict_rejects_counts_that_do_not_add_up() -> None:
    with pytest.raises(ValueError, match="add up"):
        Histogram.from_dict({"count": 3, "buckets": {"5": 1}})


def test_from_dict_rejects_bad_bucket_index() -> None:
    with pytest.raises(ValueError, match="bucket"):
        Histogram.from_dict({"count": 1, "buckets": {str(BUCKET_COUNT): 1}})
