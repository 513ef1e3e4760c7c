"""The checkers are real: deliberately broken cores are caught, a safe one is not."""

from __future__ import annotations

import pytest

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.types import Entry, HardState

from .checkers import RAFT_TRAITS, Checker, SafetyViolation, chain, encode_image
from .cluster import load_core
from .schedule import SimFailure, run_schedule


def _first_failure(kind: str, seeds: int) -> SimFailure:
    for seed in range(seeds):
        try:
            run_schedule(kind, seed, steps=150, membership=False)
        except SimFailure as e:
            return e
    pytest.fail(f"{kind}: no violation found in {seeds} schedules")


@pytest.mark.parametrize(
    ("kind", "expect"),
    [
        ("fake-split-brain", "election safety"),
        ("fake-hidden-split-brain", "stored"),
        ("fake-corrupt-apply", "state machine safety"),
        ("fake-apply-uncommitted", "beyond its durable commit"),
    ],
)
def test_broken_fake_is_caught(kind: str, expect: str) -> None:
    e = _first_failure(kind, 20)
    assert expect in e.reason
    assert f"seed {e.seed}" in str(e)


def test_checker_double_vote() -> None:
    c = Checker(RAFT_TRAITS)
    c.on_hard_state(1, HardState(term=2, vote=2))
    with pytest.raises(SafetyViolation, match="voted for 2 and then 3"):
        c.on_hard_state(1, HardState(term=2, vote=3))


def test_checker_term_goes_back() -> None:
    c = Checker(RAFT_TRAITS)
    c.on_hard_state(1, HardState(term=3))
    with pytest.raises(SafetyViolation, match="persisted term 2 after term 3"):
        c.on_hard_state(1, HardState(term=2))


def test_checker_log_matching_predecessor() -> None:
    c = Checker(RAFT_TRAITS)
    a, b = MemoryStorage({1, 2}), MemoryStorage({1, 2})
    a.append([Entry(term=1, index=1), Entry(term=2, index=2)])
    c.on_append(1, a, (Entry(term=1, index=1), Entry(term=2, index=2)))
    b.append([Entry(term=3, index=1), Entry(term=2, index=2)])
    with pytest.raises(SafetyViolation, match="log matching"):
        c.on_append(2, b, (Entry(term=3, index=1), Entry(term=2, index=2)))


def test_checker_full_scan_finds_divergence() -> None:
    c = Checker(RAFT_TRAITS)
    a, b = MemoryStorage({1, 2}), MemoryStorage({1, 2})
    a.append([Entry(term=1, index=1, data=b"x"), Entry(term=2, index=2)])
    b.append([Entry(term=1, index=1, data=b"y"), Entry(term=2, index=2)])
    with pytest.raises(SafetyViolation, match="differ at index 1"):
        c.full_log_matching({1: a, 2: b})


def test_checker_leader_completeness() -> None:
    c = Checker(RAFT_TRAITS)
    c.on_hard_state(1, HardState(term=1, vote=1, commit=1))
    e = Entry(term=1, index=1, data=b"v")
    c.on_apply(1, e, 0, chain(b"\0" * 16, e), durable_commit=1)
    with pytest.raises(SafetyViolation, match="leader completeness"):
        c.on_leader(2, 2, MemoryStorage({1, 2}))
    # A stale leader of the term it was applied in need not have it.
    c.on_leader(3, 1, MemoryStorage({1, 2}))


def test_checker_apply_gap_and_snapshot_rollback() -> None:
    c = Checker(RAFT_TRAITS)
    e = Entry(term=1, index=2, data=b"v")
    with pytest.raises(SafetyViolation, match="contiguous"):
        c.on_apply(1, e, 0, chain(b"\0" * 16, e), durable_commit=5)
    st = MemoryStorage({1})
    st.append([Entry(term=1, index=1)])
    snap = st.create_snapshot(1, st.snapshot().metadata.conf_state, encode_image(1, b"d" * 16))
    with pytest.raises(SafetyViolation, match="rolling back"):
        c.on_install(1, snap, applied=4)


def test_checker_lost_acknowledged_value() -> None:
    c = Checker(RAFT_TRAITS)
    e = Entry(term=1, index=1, data=b"v")
    d = chain(b"\0" * 16, e)
    c.on_apply(1, e, 0, d, durable_commit=1)
    with pytest.raises(SafetyViolation, match="lost"):
        c.check_converged({1: (0, b"\0" * 16), 2: (0, b"\0" * 16)})
    c.check_converged({1: (1, d), 2: (1, d)})


@pytest.mark.parametrize("kind", ["raft", "paxos"])
def test_real_core_corrupted_apply_is_caught(kind: str) -> None:
    if load_core(kind) is None:
        pytest.skip(f"the {kind} core does not import yet")
    e = _first_failure(f"{kind}-corrupt-apply", 10)
    assert "state machine safety" in e.reason


@pytest.mark.parametrize("kind", ["raft"])
def test_real_core_that_forgets_its_vote_is_caught(kind: str) -> None:
    """Wrap the real core so its vote is never persisted: crashes then let a node vote
    twice in a term, which must surface as two leaders of one term (or worse)."""
    if load_core(kind) is None:
        pytest.skip(f"the {kind} core does not import yet")
    e = _first_failure(f"{kind}-forget-vote", 300)
    # The same schedule must pass with the vote persisted, or the failure proves nothing.
    run_schedule(kind, e.seed, steps=150, membership=False)
