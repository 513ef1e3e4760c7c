"""Runs a workload from several load processes and merges what they measured.

Rule this module keeps: the load processes start measuring together (they connect first,
then wait for one start signal), every one of them is joined (or killed) before `run`
returns, and the result is built only from what all of them reported; a process that
fails fails the run with its error.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import multiprocessing.synchronize
import queue as queue_mod
import resource
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvstore.bench.histogram import Histogram
from kvstore.bench.loop import Interval, LoopResult, PreloadResult, preload, run_loop
from kvstore.bench.report import BenchResult, OpStats
from kvstore.bench.target import open_target
from kvstore.bench.workload import WorkloadSpec, split_clients


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class _Plan:
    index: int
    target: str
    endpoints: tuple[str, ...]
    spec: WorkloadSpec
    clients: int
    timeout_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class _Ready:
    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class _Tick:
    index: int
    second: int
    measuring: bool
    ops: int
    errors: int
    hist: dict[str, object]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Done:
    index: int
    reads: dict[str, Any]
    writes: dict[str, Any]
    measured_s: float
    cpu_s: float
    retries: dict[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Failed:
    index: int
    error: str


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    except ImportError:  # uvloop is a dependency, but the generator works without it
        return asyncio.new_event_loop()


def _child_main(plan: _Plan, out: Any, go: multiprocessing.synchronize.Event) -> None:
    """Entry point of one load process (spawned, so no gRPC state is inherited)."""
    try:
        with asyncio.Runner(loop_factory=_new_event_loop) as runner:
            runner.run(_child(plan, out, go))
    except BaseException as e:
        out.put(_Failed(index=plan.index, error=f"{e!r}\n{traceback.format_exc()}"))


async def _child(plan: _Plan, out: Any, go: multiprocessing.synchronize.Event) -> None:
    target = await open_target(plan.target, plan.endpoints, plan.timeout_s)
    try:
        out.put(_Ready(index=plan.index))
        loop = asyncio.get_running_loop()
        started = await loop.run_in_executor(None, go.wait, 120.0)
        if not started:
            raise BenchError("no start signal from the parent within 120s")

        def tick(iv: Interval) -> None:
            out.put(
                _Tick(
                    index=plan.index,
                    second=iv.second,
                    measuring=iv.measuring,
                    ops=iv.ops,
                    errors=iv.errors,
                    hist=iv.hist.to_dict(),
                )
            )

        res: LoopResult = await run_loop(
            target,
            plan.spec,
            plan.clients,
            seed=plan.spec.seed * 1000 + plan.index,
            on_interval=tick,
        )
        out.put(
            _Done(
                index=plan.index,
                reads=res.reads.to_dict(),
                writes=res.writes.to_dict(),
                measured_s=res.measured_s,
                cpu_s=res.cpu_s,
                retries=res.retries,
            )
        )
    finally:
        await target.close()


def _cpu_self_and_children() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


async def _preload(
    target_kind: str, endpoints: Sequence[str], spec: WorkloadSpec, t: float
) -> PreloadResult:
    target = await open_target(target_kind, endpoints, t)
    try:
        return await preload(target, spec)
    finally:
        await target.close()


def run_preload(
    target: str, endpoints: Sequence[str], spec: WorkloadSpec, timeout_s: float
) -> PreloadResult:
    """Write every key of the key space once (before a read workload). Failed puts are
    retried and counted in the result; BenchError only when no key could be written."""
    with asyncio.Runner(loop_factory=_new_event_loop) as runner:
        res = runner.run(_preload(target, endpoints, spec, timeout_s))
    if res.keys and not res.written:
        raise BenchError(f"preload wrote none of the {res.keys:,} keys: {res.last_error}")
    return res


ProgressFn = Callable[[int, bool, int, int, Histogram, Histogram], None]


def run(
    target: str,
    endpoints: Sequence[str],
    spec: WorkloadSpec,
    *,
    processes: int = 1,
    timeout_s: float = 5.0,
    progress: ProgressFn | None = None,
) -> BenchResult:
    """Run `spec` against `target` from `processes` load processes; block until done.

    `progress(second, measuring, ops, errors, second_hist, measured_so_far_hist)` is
    called once per second of the run, after every load process has reported that second.
    """
    spec.validate()
    cpu_before = _cpu_self_and_children()
    shares = split_clients(spec.clients, processes)
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    go = ctx.Event()
    procs = []
    for i, n in enumerate(shares):
        plan = _Plan(
            index=i,
            target=target,
            endpoints=tuple(endpoints),
            spec=spec,
            clients=n,
            timeout_s=timeout_s,
        )
        p = ctx.Process(
            target=_child_main, args=(plan, out, go), name=f"bench-load-{i}", daemon=True
        )
        p.start()
        procs.append(p)
    try:
        done = _collect(procs, out, go, spec, progress)
    finally:
        go.set()  # a child still waiting must not wait for its 120s timeout
        for p in procs:
            p.join(timeout=10.0)
            if p.is_alive():
                p.kill()
                p.join()
    reads, writes = OpStats(), OpStats()
    load_cpu = 0.0
    retries: dict[str, int] = {}
    for d in done:
        reads.merge(OpStats.from_dict(d.reads))
        writes.merge(OpStats.from_dict(d.writes))
        load_cpu += d.cpu_s
        for k, v in d.retries.items():
            retries[k] = retries.get(k, 0) + v
    return BenchResult(
        target=target,
        endpoints=list(endpoints),
        spec=spec,
        processes=len(shares),
        measured_s=spec.duration_s,
        reads=reads,
        writes=writes,
        load_cpu_s=load_cpu,
        total_cpu_s=_cpu_self_and_children() - cpu_before,
        retries=retries,
    )


def _collect(
    procs: list[Any],
    out: Any,
    go: multiprocessing.synchronize.Event,
    spec: WorkloadSpec,
    progress: ProgressFn | None,
) -> list[_Done]:
    n = len(procs)
    ready: set[int] = set()
    done: dict[int, _Done] = {}
    seconds: dict[int, list[_Tick]] = {}
    so_far = Histogram()
    deadline = time.monotonic() + 60.0 + spec.warmup_s + spec.duration_s * 2 + 60.0
    while len(done) < n:
        if time.monotonic() > deadline:
            raise BenchError("load processes did not finish in time")
        try:
            msg = out.get(timeout=0.5)
        except queue_mod.Empty:
            for i, p in enumerate(procs):
                if not p.is_alive() and i not in done:
                    raise BenchError(f"load process {i} exited with code {p.exitcode}") from None
            continue
        if isinstance(msg, _Failed):
            raise BenchError(f"load process {msg.index} failed: {msg.error}")
        if isinstance(msg, _Ready):
            ready.add(msg.index)
            if len(ready) == n:
                go.set()
        elif isinstance(msg, _Tick):
            ticks = seconds.setdefault(msg.second, [])
            ticks.append(msg)
            if len(ticks) == n:
                del seconds[msg.second]
                hist = Histogram()
                for t in ticks:
                    hist.merge(Histogram.from_dict(t.hist))
                if msg.measuring:
                    so_far.merge(hist)
                if progress is not None:
                    progress(
                        msg.second,
                        msg.measuring,
                        sum(t.ops for t in ticks),
                        sum(t.errors for t in ticks),
                        hist,
                        so_far,
                    )
        elif isinstance(msg, _Done):
            done[msg.index] = msg
    return [done[i] for i in range(n)]
