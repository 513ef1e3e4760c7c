"""The checkers are real: deliberately broken cores are caught, a safe one is not."""

from __future__ import annotations

import random
import re

import pytest

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.types import Core, Entry, HardState, MessageType, ReadState, Role

from .checkers import RAFT_TRAITS, Checker, SafetyViolation, chain, encode_image
from .cluster import Cluster, CoreParams, load_core
from .network import Network
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
        # The hidden second leader answers reads from its own log (a stale read), or it
        # writes a different entry at an index and term (log matching).
        ("fake-hidden-split-brain", "stored|stale read"),
        ("fake-corrupt-apply", "state machine safety"),
        ("fake-apply-uncommitted", "beyond its durable commit"),
    ],
)
def test_broken_fake_is_caught(kind: str, expect: str) -> None:
    e = _first_failure(kind, 20)
    assert re.search(expect, e.reason), e.reason
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


def test_checker_stale_read_index() -> None:
    c = Checker(RAFT_TRAITS)
    e = Entry(term=1, index=1, data=b"v")
    c.on_apply(1, e, 0, chain(b"\0" * 16, e), durable_commit=1)
    c.on_read_request(b"r1")
    c.on_read_state(2, ReadState(index=1, request_ctx=b"r1"))
    with pytest.raises(SafetyViolation, match="stale read"):
        c.on_read_state(3, ReadState(index=0, request_ctx=b"r1"))


@pytest.mark.parametrize("kind", ["raft", "paxos"])
def test_real_core_corrupted_apply_is_caught(kind: str) -> None:
    if load_core(kind) is None:
        pytest.skip(f"the {kind} core does not import yet")
    e = _first_failure(f"{kind}-corrupt-apply", 10)
    assert "state machine safety" in e.reason


def _double_vote_script(name: str) -> Cluster:
    """Node 1 wins term 1 with node 2's vote; node 2 restarts; node 3 then asks node 2 for
    its vote in the same term 1. Only a node that forgot its vote grants it."""
    loaded = load_core(name)
    assert loaded is not None
    factory, traits = loaded
    net = Network(random.Random(0))
    c = Cluster(
        factory=factory,
        checker=Checker(traits),
        n=3,
        rng=random.Random(1),
        net=net,
        params=CoreParams(pre_vote=False, check_quorum=False),
    )

    def settle() -> None:
        for node in c.up_nodes():
            c.handle_ready(node)
        c.check_step()

    def exchange_votes(a: int, b: int) -> None:
        for _ in range(3):
            c.now += 1
            for m in net.due(c.now):
                votes = m.type in (MessageType.VOTE, MessageType.VOTE_RESP)
                core = c.nodes[m.to].core
                if votes and {m.from_, m.to} == {a, b} and core is not None:
                    core.step(m)
            settle()

    def core(i: int) -> Core:
        node = c.nodes[i].core
        assert node is not None
        return node

    core(1).campaign()
    settle()
    exchange_votes(1, 2)
    assert core(1).status().role == Role.LEADER
    c.crash(2)
    c.restart(2)
    core(3).campaign()
    settle()
    exchange_votes(2, 3)
    return c


@pytest.mark.parametrize("kind", ["raft"])
def test_real_core_that_forgets_its_vote_is_caught(kind: str) -> None:
    """Wrap the real core so its vote is never persisted: a restart lets a node vote twice
    in one term, and the checker must see two leaders of that term. The same script with
    the vote persisted must pass (else the failure would prove nothing)."""
    if load_core(kind) is None:
        pytest.skip(f"the {kind} core does not import yet")
    c = _double_vote_script(kind)
    assert c.nodes[3].core is not None
    assert c.nodes[3].core.status().role != Role.LEADER
    with pytest.raises(SafetyViolation, match="election safety"):
        _double_vote_script(f"{kind}-forget-vote")
