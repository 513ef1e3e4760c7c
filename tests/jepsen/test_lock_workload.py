"""The lock workload's checker (kvstore/jepsen/lock_workload.py) on made-up histories:
valid hand-overs pass; a repeated token, a token out of real-time order, a resource write
after a later holder's and a lost acknowledged append are each caught; overlapping holds
are reported as findings, not anomalies."""

from __future__ import annotations

from typing import Any

from kvstore.jepsen.history import Event
from kvstore.jepsen.lock_workload import LOCK, RESOURCE, check_lock, findings


def hold(p: int, start: float, end: float, token: int, accepted: int = 2) -> list[Event]:
    value = (token, accepted, start + 0.1, end - 0.1)
    return [
        Event(type="invoke", process=p, f="hold", key=LOCK, value=None, time=start),
        Event(type="ok", process=p, f="hold", key=LOCK, value=value, time=end),
    ]


def final(*tokens: int) -> dict[str, Any]:
    return {RESOURCE: tuple(tokens)}


def test_hand_overs_in_order_are_valid() -> None:
    events = hold(0, 0, 1, 5) + hold(1, 0.85, 2, 9) + hold(2, 2.5, 3, 12, accepted=1)
    assert check_lock(events, final(5, 5, 9, 9, 12)) == []
    assert findings(events)["overlapping_holds"] == 0


def test_a_repeated_or_out_of_order_token_is_caught() -> None:
    twice = hold(0, 0, 1, 5) + hold(1, 2, 3, 5)
    assert any("two holds got fencing token 5" in a for a in check_lock(twice, final(5, 5)))
    backwards = hold(0, 0, 1, 9) + hold(1, 2, 3, 5, accepted=0)
    assert any("not larger" in a for a in check_lock(backwards, final(9, 9)))


def test_a_write_past_the_fence_or_a_lost_append_is_caught() -> None:
    events = hold(0, 0, 1, 5) + hold(1, 2, 3, 9)
    assert any("after 9" in a for a in check_lock(events, final(5, 9, 5, 9)))
    assert any("2 appends acknowledged, 1" in a for a in check_lock(events, final(5, 5, 9)))


def test_overlapping_holds_are_findings_not_anomalies() -> None:
    # Process 0 stalled past its TTL: process 1 won the lock while 0 still thought it held it;
    # the fence refused 0's late append.
    events = hold(0, 0, 3, 5, accepted=1) + hold(1, 1, 2, 9)
    assert check_lock(events, final(5, 9, 9)) == []
    f = findings(events)
    assert f["overlapping_holds"] == 1 and f["fenced_out_appends"] == 1
