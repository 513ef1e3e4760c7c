"""Workloads against in-memory stores, end to end through the checkers (no cluster)."""

from __future__ import annotations

import asyncio
import itertools
import math
import random

import pytest

from kvstore.jepsen.checker.linearizable import check
from kvstore.jepsen.checker.lostwrite import check_appends
from kvstore.jepsen.checker.session import check_sessions
from kvstore.jepsen.history import Event, Operation, pair
from kvstore.jepsen.runner import FINAL_PROCESS, RunConfig, check_history
from kvstore.jepsen.workloads import KeyRing, Recorder, Workload, final_reads, make, run_worker

from .fakestore import FakeStore


def _run(
    workload: Workload, store: FakeStore, read_mode: str, *, seconds: float = 0.4, workers: int = 4
) -> tuple[list[Event], dict[str, object]]:
    async def go() -> tuple[list[Event], dict[str, object]]:
        rec = Recorder()
        await asyncio.gather(
            *(
                run_worker(
                    worker=w,
                    concurrency=workers,
                    workload=workload,
                    store=store,
                    recorder=rec,
                    read_mode=read_mode,
                    until=seconds,
                    op_timeout=1.0,
                    rng=random.Random(w),
                    pace=0.001,
                )
                for w in range(workers)
            )
        )
        final = await final_reads(
            keys=workload.keys,
            workload=workload,
            store=store,
            recorder=rec,
            process=FINAL_PROCESS,
            deadline=rec.now() + 2,
            op_timeout=1.0,
        )
        return rec.events, final

    return asyncio.run(go())


def test_register_on_a_linearizable_store_is_valid() -> None:
    wl = make("register", keys=3, concurrency=4, per_key=10)
    events, final = _run(wl, FakeStore(seed=1), "strong")
    assert len(events) > 60 and set(final) == set(wl.keys)
    assert len(wl.keys) > 3, "keys retire and fresh ones take their slots"
    verdict, anomalies, _ = check_history(RunConfig(workload="register"), events, final, wl)
    assert verdict == "valid", anomalies


def test_register_with_stale_reads_is_caught() -> None:
    wl = make("register", keys=2, concurrency=4)
    events, final = _run(wl, FakeStore(seed=2, stale=True), "eventual")
    cfg = RunConfig(workload="register", read_mode="eventual")
    verdict, anomalies, _ = check_history(cfg, events, final, wl)
    assert verdict == "invalid"
    assert any("not linearizable" in a for a in anomalies)


def test_append_on_a_linearizable_store_is_valid() -> None:
    wl = make("append", keys=2, concurrency=4, per_key=30)
    events, final = _run(wl, FakeStore(seed=3), "strong")
    assert any(ev.f == "append" and ev.type == "ok" for ev in events)
    verdict, anomalies, _ = check_history(RunConfig(workload="append"), events, final, wl)
    assert verdict == "valid", anomalies


def test_append_losing_acknowledged_writes_is_caught() -> None:
    wl = make("append", keys=2, concurrency=4)
    events, final = _run(wl, FakeStore(seed=4, lose_every=7), "strong")
    found = check_appends(events, final, wl.keys)
    assert any(a.kind == "lost-write" for a in found)


def test_session_on_a_linearizable_store_is_valid() -> None:
    wl = make("session", keys=0, concurrency=4)
    events, final = _run(wl, FakeStore(seed=5), "causal")
    verdict, anomalies, _ = check_history(RunConfig(workload="session"), events, final, wl)
    assert verdict == "valid", anomalies


def test_session_with_stale_reads_breaks_read_your_writes() -> None:
    wl = make("session", keys=0, concurrency=4)
    events, final = _run(wl, FakeStore(seed=6, stale=True, lag=50), "eventual")
    kinds = {a.kind for a in check_sessions(pair(events), 4, final)}
    assert "read-your-writes" in kinds


def _op(
    i: int, p: int, f: str, key: str, inp: object, out: object, call: float, ret: float
) -> Operation:
    return Operation(
        id=i,
        process=p,
        f=f,
        key=key,
        input=inp,
        output=out,
        call=call,
        ret=ret,
        unknown=math.isinf(ret),
    )


def test_key_ring_retires_keys_after_their_budget() -> None:
    ring = KeyRing(prefix="r", slots=2, per_key=3)
    rng = random.Random(1)
    picks = [ring.pick(rng) for _ in range(30)]
    assert all(picks.count(k) <= 3 for k in set(picks))
    assert ring.keys[:2] == ["ar0", "hr1"] and len(ring.keys) >= 10
    assert set(picks) <= set(ring.keys)


@pytest.mark.parametrize("shards", [2, 3, 4, 8, 26])
@pytest.mark.parametrize("name", ["register", "append", "session"])
def test_workload_keys_spread_over_the_default_shards(name: str, shards: int) -> None:
    """A sharded run must hit every shard of the default split, not one of them."""
    from kvstore.shard.layout import initial_map

    shard_map = initial_map([1, 2, 3], shards)
    w = make(name, keys=4, concurrency=26, per_key=1)
    rng = random.Random(3)
    for i in range(200):
        w.generate(i % 26, i % 26, rng)
    owner = [shard_map.lookup(k.encode()) for k in w.keys]
    assert {d.id for d in owner if d} == set(range(1, shards + 1))
    if shards == 4:
        # consecutive keys land in different shards: the keys in use at once spread too
        assert all(a != b for a, b in itertools.pairwise(owner))


def test_session_checker_monotonic_reads_and_phantoms() -> None:
    ops = [
        _op(0, 0, "write", "s0", 1, 1, 0, 1),
        _op(1, 0, "write", "s0", 2, 2, 2, 3),
        _op(2, 1, "read", "s0", None, 2, 4, 5),
        _op(3, 1, "read", "s0", None, 1, 6, 7),
        _op(4, 1, "read", "s0", None, 9, 8, 9),
    ]
    kinds = [a.kind for a in check_sessions(ops, 2, {"s0": 1})]
    assert kinds == ["monotonic-reads", "phantom", "lost-write"]


def test_lost_write_checker_finds_reorders_duplicates_and_phantoms() -> None:
    events = []
    t = 0.0
    for p, x in enumerate([1, 2, 3]):
        events.append(Event(type="invoke", process=p, f="append", key="a", value=x, time=t))
        events.append(Event(type="ok", process=p, f="append", key="a", value=x, time=t + 0.5))
        t += 1
    found = check_appends(events, {"a": (2, 1, 3, 3, 9)}, ["a", "b"])
    assert sorted(a.kind for a in found) == [
        "duplicate",
        "no-final-read",
        "phantom",
        "reordered",
    ]
    assert not check_appends(events, {"a": (1, 2, 3), "b": ()}, ["a", "b"])


@pytest.mark.parametrize("name", ["register", "append", "session"])
def test_histories_pair_cleanly(name: str) -> None:
    wl = make(name, keys=2, concurrency=3)
    events, _ = _run(wl, FakeStore(seed=7), "strong", seconds=0.2, workers=3)
    ops = pair(events)
    assert ops and all(op.call <= op.ret for op in ops)
    if wl.model is not None:
        assert check(ops, wl.model).ok
