"""The watch workload's checker (kvstore/jepsen/watch_workload.py) on made-up histories:
overlapping watchers that agree pass; a lost write, a duplicate, an out-of-order event,
an invented value and two watchers that disagree are each caught."""

from __future__ import annotations

from kvstore.jepsen.history import Event
from kvstore.jepsen.watch_workload import KEYS, MARKER, PREFIX, check_watch

A, B = KEYS[0], KEYS[1]


def write(p: int, key: str, value: str, rev: int) -> list[Event]:
    return [
        Event(type="invoke", process=p, f="write", key=key, value=value),
        Event(type="ok", process=p, f="write", key=key, value=rev),
    ]


def watch(p: int, marker: str, start: int, evs: list[tuple[int, str, str]]) -> list[Event]:
    end = evs[-1][0]
    seg = (start, end, tuple((1, r, k, v) for r, k, v in evs))
    return [
        Event(type="invoke", process=p, f="watch", key=PREFIX, value=marker),
        Event(type="ok", process=p, f="watch", key=PREFIX, value=seg),
    ]


BASE = write(1, A, "a1", 3) + write(2, B, "b1", 4) + write(1, A, "a2", 6)


def test_overlapping_watchers_that_agree_are_valid() -> None:
    events = (
        BASE
        + watch(5, "m1", 2, [(3, A, "a1"), (4, B, "b1"), (5, MARKER, "m1")])
        + watch(6, "m2", 4, [(4, B, "b1"), (5, MARKER, "m1"), (6, A, "a2"), (7, MARKER, "m2")])
    )
    assert check_watch(events) == []


def test_a_lost_write_and_a_duplicate_are_caught() -> None:
    lost = BASE + watch(5, "m1", 2, [(3, A, "a1"), (5, MARKER, "m1")])
    assert any("b1 at 4 missing" in a for a in check_watch(lost))
    twice = BASE + watch(5, "m1", 2, [(3, A, "a1"), (4, B, "b1"), (4, B, "b1"), (5, MARKER, "m1")])
    assert any("twice" in a for a in check_watch(twice))


def test_disorder_invention_and_disagreement_are_caught() -> None:
    order = BASE + watch(5, "m1", 2, [(4, B, "b1"), (3, A, "a1"), (5, MARKER, "m1")])
    assert any("revision 3 after 4" in a for a in check_watch(order))
    made_up = BASE + watch(
        5, "m1", 2, [(3, A, "a1"), (4, B, "zz"), (4, B, "b1"), (5, MARKER, "m1")]
    )
    assert any("nobody wrote" in a for a in check_watch(made_up))
    disagree = (
        BASE
        + write(3, B, "b2", 4)
        + watch(5, "m1", 2, [(3, A, "a1"), (4, B, "b1"), (5, MARKER, "m1")])
        + watch(6, "m2", 2, [(3, A, "a1"), (4, B, "b2"), (5, MARKER, "m1"), (6, MARKER, "m2")])
    )
    assert any("disagree on revision 4" in a for a in check_watch(disagree))


def test_the_worker_records_what_writes_and_watches_returned() -> None:
    """Regression: the worker recorded the invocation's value for every ok but reads, cas
    and holds, so a watch run's history had no revisions and no segments to check."""
    import asyncio
    import random

    from kvstore.jepsen.watch_workload import WatchWorkload
    from kvstore.jepsen.workloads import Recorder, run_worker

    from .fakestore import FakeStore

    store = FakeStore()
    rec = Recorder()
    asyncio.run(
        run_worker(
            worker=0,
            concurrency=1,
            workload=WatchWorkload(),
            store=store,
            recorder=rec,
            read_mode="strong",
            until=0.3,
            op_timeout=1.0,
            rng=random.Random(1),
            pace=0.001,
        )
    )
    oks = [e for e in rec.events if e.type == "ok" and e.f == "write"]
    assert oks and all(isinstance(e.value, int) for e in oks)
    assert check_watch(rec.events) == []
