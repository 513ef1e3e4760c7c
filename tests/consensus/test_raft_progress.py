"""Progress states: every (state, event) pair of the one transition table, and the
in-flight window's caps."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.consensus.raft.progress import (
    TRANSITIONS,
    Inflights,
    Progress,
    ProgressEvent,
    ProgressState,
)

PAIRS = list(itertools.product(ProgressState, ProgressEvent))


def test_table_is_complete() -> None:
    assert set(TRANSITIONS) == set(PAIRS)


def make(state: ProgressState) -> Progress:
    """A follower with match 5, in ``state``, with the event preconditions met."""
    pr = Progress(match=5, next=6, inflights=Inflights(4, 1000))
    if state is ProgressState.REPLICATE:
        pr.ack(5)  # PROBE -> REPLICATE needs news; use a fresh match
        pr.match = 4
        pr.ack(5)
        pr.sent_entries(2, 100)  # next 8, one append in flight
    elif state is ProgressState.SNAPSHOT:
        pr.need_snapshot(10)
    else:
        pr.sent_entries(1, 50)  # a probe is out: next-1 == 5
    assert pr.state is state
    return pr


def fire(pr: Progress, event: ProgressEvent) -> None:
    if event is ProgressEvent.SENT_ENTRIES:
        pr.sent_entries(1, 10)
    elif event is ProgressEvent.ACK:
        pr.ack(pr.match + 1)
    elif event is ProgressEvent.REJECT:
        pr.reject(pr.next - 1, 2)
    elif event is ProgressEvent.NEED_SNAPSHOT:
        pr.need_snapshot(12)
    elif event is ProgressEvent.SNAPSHOT_DONE:
        pr.snapshot_done()
    elif event is ProgressEvent.SNAPSHOT_FAILED:
        pr.snapshot_failed()
    elif event is ProgressEvent.UNREACHABLE:
        pr.unreachable()
    elif event is ProgressEvent.SNAPSHOT_SENT:
        pr.snapshot_reported(ok=True)
    else:
        pr.heartbeat_resp()


@pytest.mark.parametrize(("state", "event"), PAIRS, ids=[f"{s.name}-{e.name}" for s, e in PAIRS])
def test_every_pair_follows_the_table(state: ProgressState, event: ProgressEvent) -> None:
    pr = make(state)
    fire(pr, event)
    assert pr.state is TRANSITIONS[(state, event)]
    assert pr.match < pr.next
    if pr.state is not ProgressState.REPLICATE:
        assert pr.inflights.count() == 0


def test_probe_pauses_after_one_append_until_heartbeat() -> None:
    pr = make(ProgressState.PROBE)
    assert pr.is_paused()
    pr.heartbeat_resp()
    assert not pr.is_paused()


def test_reject_in_probe_uses_the_hint_but_never_goes_below_match() -> None:
    pr = Progress(match=2, next=9, inflights=Inflights(4, 1000))
    assert pr.reject(8, 5)
    assert pr.next == 6
    pr.next = 9
    assert pr.reject(8, 0)
    assert pr.next == 3  # match + 1
    assert not pr.reject(7, 0)  # stale: answers an older probe


def test_stale_reject_in_replicate_is_ignored() -> None:
    pr = make(ProgressState.REPLICATE)
    assert not pr.reject(pr.match, 0)
    assert pr.state is ProgressState.REPLICATE


def test_leaving_snapshot_resumes_after_the_snapshot() -> None:
    pr = make(ProgressState.SNAPSHOT)
    pr.snapshot_failed()
    assert pr.state is ProgressState.PROBE
    assert pr.next == 11  # pending snapshot 10 + 1


def test_snapshot_reports_probe_after_it_or_from_match() -> None:
    """etcd's ReportSnapshot: delivered -> probe after the snapshot; failed -> forget
    it and probe from match + 1; both paused until the follower answers a heartbeat."""
    pr = make(ProgressState.SNAPSHOT)
    pr.snapshot_reported(ok=True)
    assert (pr.state, pr.next, pr.is_paused()) == (ProgressState.PROBE, 11, True)
    pr = make(ProgressState.SNAPSHOT)
    pr.snapshot_reported(ok=False)
    assert (pr.state, pr.next, pr.is_paused()) == (ProgressState.PROBE, 6, True)
    pr.heartbeat_resp()
    assert not pr.is_paused()


def test_unreachable_stops_streaming() -> None:
    """etcd's ReportUnreachable: what is in flight may be lost; probe from match + 1."""
    pr = make(ProgressState.REPLICATE)
    pr.unreachable()
    assert (pr.state, pr.next, pr.is_paused()) == (ProgressState.PROBE, 6, True)
    assert pr.inflights.count() == 0


@given(st.lists(st.tuples(st.integers(1, 5), st.integers(0, 300)), max_size=40))
def test_inflights_caps(ops: list[tuple[int, int]]) -> None:
    inf = Inflights(max_count=4, max_bytes=500)
    index, model = 0, []
    for step, size in ops:
        if step == 1 and model:  # ack the oldest half
            upto = model[len(model) // 2][0]
            inf.free_le(upto)
            model = [m for m in model if m[0] > upto]
        elif not inf.full():
            index += step
            inf.add(index, size)
            model.append((index, size))
        assert inf.count() == len(model)
        assert inf.bytes == sum(s for _, s in model)
        assert inf.full() == (len(model) >= 4 or inf.bytes >= 500)
