"""The closed loop inside one load process.

Rule this module keeps: each of the process's clients has exactly one request in flight
and issues its next as soon as the last returns; a request counts when it *completes*
inside the measured window [end of warmup, end of duration), so throughput is exactly
count / duration, and warmup and the drain at the end never leak into the numbers.
Failures are counted by error name and the client goes on; so are the retries the store's
client made inside the measured window. The preload retries a key that failed and counts
its errors the same way, instead of ending the run.
"""

from __future__ import annotations

import asyncio
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kvstore.bench.histogram import Histogram
from kvstore.bench.report import OpStats, format_retries
from kvstore.bench.target import Target
from kvstore.bench.workload import WorkloadSpec, key_name


@dataclass(frozen=True, slots=True, kw_only=True)
class Interval:
    """One second of one load process, for the live progress display."""

    second: int
    measuring: bool
    ops: int
    errors: int
    hist: Histogram


@dataclass(slots=True, kw_only=True)
class LoopResult:
    reads: OpStats
    writes: OpStats
    measured_s: float
    cpu_s: float
    retries: dict[str, int] = field(default_factory=dict)
    """The client's retries in the measured window (see Target.retries)."""


@dataclass(slots=True, kw_only=True)
class PreloadResult:
    keys: int
    written: int
    seconds: float
    errors: dict[str, int]
    """Failed puts by error name (each was tried again, up to PRELOAD_TRIES times)."""
    last_error: str
    retries: dict[str, int]
    """The client's own retries inside the puts (see Target.retries)."""

    @property
    def failed(self) -> int:
        return self.keys - self.written

    def describe(self) -> str:
        text = f"preload: {self.written:,} of {self.keys:,} keys written in {self.seconds:.1f}s"
        if self.errors:
            text += ", errors " + ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items()))
        retried = format_retries(self.retries)
        if retried:
            text += f"; {retried}"
        if self.failed:
            text += f"; last error: {self.last_error}"
        return text


PRELOAD_TRIES = 4


def diff_counts(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    out = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in out.items() if v}


def cpu_seconds_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def preload(
    target: Target, spec: WorkloadSpec, concurrency: int = 64, tries: int = PRELOAD_TRIES
) -> PreloadResult:
    """Write every key once, so reads find values of the benchmark's size. A put that fails
    is counted and tried again (up to ``tries`` times); a key that never succeeds is
    reported, not raised."""
    value = random.Random(spec.seed).randbytes(spec.value_size)
    pending = iter(range(spec.keys))
    errors: dict[str, int] = {}
    written = 0
    last_error = ""
    before = target.retries()
    t0 = time.monotonic()

    async def writer() -> None:
        nonlocal written, last_error
        for i in pending:
            for attempt in range(tries):
                try:
                    await target.put(key_name(i), value)
                except Exception as e:
                    name = type(e).__name__
                    errors[name] = errors.get(name, 0) + 1
                    last_error = f"{name}: {e}"
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                written += 1
                break

    await asyncio.gather(*(writer() for _ in range(min(concurrency, spec.keys))))
    return PreloadResult(
        keys=spec.keys,
        written=written,
        seconds=time.monotonic() - t0,
        errors=errors,
        last_error=last_error,
        retries=diff_counts(target.retries(), before),
    )


async def run_loop(
    target: Target,
    spec: WorkloadSpec,
    clients: int,
    seed: int,
    on_interval: Callable[[Interval], None] | None = None,
) -> LoopResult:
    """Run `clients` closed-loop clients for warmup + duration; return the measured stats."""
    rng = random.Random(seed)
    value = rng.randbytes(spec.value_size)
    keys = [key_name(i) for i in range(spec.keys)]
    reads, writes = OpStats(), OpStats()
    interval = Histogram()
    interval_ops = 0
    interval_errors = 0
    clock = time.perf_counter_ns
    start = clock()
    record_from = start + int(spec.warmup_s * 1e9)
    stop_at = record_from + int(spec.duration_s * 1e9)
    cpu_marks: list[float] = []  # CPU seconds at the start and at the end of the window
    retry_marks: list[dict[str, int]] = []  # the client's retries at the same two moments
    read_ratio, read_mode = spec.read_ratio, spec.read_mode

    async def client(rng: random.Random) -> None:
        nonlocal interval_ops, interval_errors
        pick, coin = rng.randrange, rng.random
        n = len(keys)
        while True:
            t0 = clock()
            if t0 >= stop_at:
                return
            key = keys[pick(n)]
            is_read = read_ratio > 0.0 and coin() < read_ratio
            stats = reads if is_read else writes
            try:
                if is_read:
                    await target.get(key, read_mode)
                else:
                    await target.put(key, value)
            except Exception as e:
                interval_errors += 1
                t1 = clock()
                if record_from <= t1 < stop_at:
                    name = type(e).__name__
                    stats.errors[name] = stats.errors.get(name, 0) + 1
                    stats.error_hist.record((t1 - t0) // 1000)
                # A failing store answers at once; do not spin a core on it.
                await asyncio.sleep(0.01)
                continue
            t1 = clock()
            us = (t1 - t0) // 1000
            interval.record(us)
            interval_ops += 1
            if record_from <= t1 < stop_at:
                stats.ops += 1
                stats.hist.record(us)

    async def reporter() -> None:
        nonlocal interval, interval_ops, interval_errors
        second = 0
        while True:
            second += 1
            wake = start + second * 1_000_000_000
            if wake > stop_at:
                return
            await asyncio.sleep(max(0.0, (wake - clock()) / 1e9))
            if on_interval is not None:
                on_interval(
                    Interval(
                        second=second,
                        measuring=wake > record_from,
                        ops=interval_ops,
                        errors=interval_errors,
                        hist=interval,
                    )
                )
            interval, interval_ops, interval_errors = Histogram(), 0, 0

    async def cpu_mark() -> None:
        for at in (record_from, stop_at):
            await asyncio.sleep(max(0.0, (at - clock()) / 1e9))
            cpu_marks.append(cpu_seconds_self())
            retry_marks.append(target.retries())

    rep = asyncio.create_task(reporter())
    mark = asyncio.create_task(cpu_mark())
    await asyncio.gather(*(client(random.Random(rng.random())) for _ in range(clients)))
    cpu_end = cpu_seconds_self()
    retries_end = target.retries()
    # Not cancelled: the last second's report falls due at stop_at, which has passed, and a
    # busy loop may not have run it yet (the progress display lost its final second).
    await rep
    mark.cancel()
    cpu_s = (cpu_marks[1] if len(cpu_marks) > 1 else cpu_end) - cpu_marks[0] if cpu_marks else 0.0
    retries = (
        diff_counts(retry_marks[1] if len(retry_marks) > 1 else retries_end, retry_marks[0])
        if retry_marks
        else {}
    )
    return LoopResult(
        reads=reads, writes=writes, measured_s=spec.duration_s, cpu_s=cpu_s, retries=retries
    )
