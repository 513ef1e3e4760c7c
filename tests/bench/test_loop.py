"""The closed loop against an in-memory target: counting, errors and the measured window."""

from __future__ import annotations

import asyncio

from kvstore.bench.loop import Interval, preload, run_loop
from kvstore.bench.workload import WorkloadSpec, key_name


class FakeTarget:
    def __init__(self, fail_every: int = 0) -> None:
        self.retried: dict[str, int] = {}
        self.data: dict[bytes, bytes] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls = 0
        self.fail_every = fail_every
        self.read_modes: set[str] = set()

    async def _op(self) -> None:
        self.calls += 1
        n = self.calls
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            if n % 3 == 0:
                # As a client that retries inside a call reports it.
                self.retried["requests"] = self.retried.get("requests", 0) + 1
                self.retried["no answer"] = self.retried.get("no answer", 0) + 1
            if self.fail_every and n % self.fail_every == 0:
                raise TimeoutError("injected")
        finally:
            self.in_flight -= 1

    async def put(self, key: bytes, value: bytes) -> None:
        await self._op()
        self.data[key] = value

    async def get(self, key: bytes, read_mode: str) -> bytes | None:
        self.read_modes.add(read_mode)
        await self._op()
        return self.data.get(key)

    async def close(self) -> None:
        pass

    def retries(self) -> dict[str, int]:
        return dict(self.retried)


def test_closed_loop_keeps_exactly_clients_in_flight_and_counts_ops() -> None:
    target = FakeTarget()
    spec = WorkloadSpec(clients=8, duration_s=0.3, warmup_s=0.1, value_size=16, keys=10)
    res = asyncio.run(run_loop(target, spec, clients=8, seed=1))
    assert target.max_in_flight == 8
    assert res.reads.ops == 0
    assert res.writes.ops > 0
    assert res.writes.hist.count == res.writes.ops
    # Warmup and drain are excluded: fewer ops counted than issued.
    assert res.writes.ops < target.calls
    assert res.measured_s == 0.3
    assert all(len(v) == 16 for v in target.data.values())


def test_read_ratio_and_mode_reach_the_target() -> None:
    target = FakeTarget()
    spec = WorkloadSpec(
        clients=4, duration_s=0.2, warmup_s=0.0, keys=5, read_ratio=0.5, read_mode="eventual"
    )
    res = asyncio.run(run_loop(target, spec, clients=4, seed=2))
    assert res.reads.ops > 0 and res.writes.ops > 0
    assert target.read_modes == {"eventual"}


def test_failures_are_counted_by_name_and_the_loop_goes_on() -> None:
    target = FakeTarget(fail_every=5)
    spec = WorkloadSpec(clients=2, duration_s=0.3, warmup_s=0.0, keys=5)
    res = asyncio.run(run_loop(target, spec, clients=2, seed=3))
    assert res.writes.errors.get("TimeoutError", 0) > 0
    assert res.writes.error_hist.count == res.writes.errors["TimeoutError"]
    assert res.writes.error_hist.min_us >= 1000  # the injected failure came after a 1 ms sleep
    assert res.writes.ops > res.writes.errors["TimeoutError"]


def test_retries_of_the_client_are_counted_in_the_measured_window_only() -> None:
    target = FakeTarget()
    spec = WorkloadSpec(clients=2, duration_s=0.3, warmup_s=0.1, keys=5)
    res = asyncio.run(run_loop(target, spec, clients=2, seed=5))
    total = target.retries()["requests"]
    assert 0 < res.retries["requests"] < total
    assert res.retries["no answer"] == res.retries["requests"]


def test_intervals_are_reported_once_a_second() -> None:
    target = FakeTarget()
    seen: list[Interval] = []
    spec = WorkloadSpec(clients=2, duration_s=1.0, warmup_s=1.0, keys=5)
    asyncio.run(run_loop(target, spec, clients=2, seed=4, on_interval=seen.append))
    assert [iv.second for iv in seen] == [1, 2]
    assert [iv.measuring for iv in seen] == [False, True]
    assert all(iv.ops == iv.hist.count > 0 for iv in seen)


def test_preload_writes_every_key_once() -> None:
    target = FakeTarget()
    spec = WorkloadSpec(keys=50, value_size=8)
    res = asyncio.run(preload(target, spec, concurrency=4))
    assert set(target.data) == {key_name(i) for i in range(50)}
    assert target.calls == 50
    assert target.max_in_flight == 4
    assert (res.written, res.failed, res.errors) == (50, 0, {})
    assert res.retries == {"requests": 16, "no answer": 16}
    assert "16 requests retried (no answer: 16)" in res.describe()


def test_preload_retries_a_failed_key_and_reports_errors() -> None:
    # Every 4th put fails: each failed key succeeds on its next try.
    target = FakeTarget(fail_every=4)
    spec = WorkloadSpec(keys=30, value_size=8)
    res = asyncio.run(preload(target, spec, concurrency=4))
    assert set(target.data) == {key_name(i) for i in range(30)}
    assert res.written == 30 and res.failed == 0
    assert res.errors["TimeoutError"] == target.calls - 30 > 0
    assert "30 of 30 keys written" in res.describe()
    assert "TimeoutError: " in res.describe()


def test_preload_gives_up_on_a_key_after_its_tries_and_goes_on() -> None:
    target = FakeTarget(fail_every=1)
    spec = WorkloadSpec(keys=3, value_size=8)
    res = asyncio.run(preload(target, spec, concurrency=3, tries=2))
    assert (res.written, res.failed) == (0, 3)
    assert res.errors == {"TimeoutError": 6}
    assert "last error: TimeoutError: injected" in res.describe()
