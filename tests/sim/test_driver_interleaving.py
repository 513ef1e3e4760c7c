"""The real driver's Ready protocol (early leader sends, steps between ready() and advance(),
conf changes applied before the persist, apply in the persist's transaction, writes
answered from the transaction before its commit, crashes at any point) over the real Raft
and Multi-Paxos cores: seeded schedules, every safety checker, and no lost acknowledged
write (tests/sim/driver_model.py says what is modelled). The
Paxos leader's early ACCEPTs (issue 10) were enabled in the node after these passed.

Replay one seed: pytest tests/sim/test_driver_interleaving.py -k 'schedules and raft'
--sim-seed N (or paxos)
"""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.raft import RawNode
from kvstore.consensus.types import Config, Entry, Message, MessageType

from .checkers import SafetyViolation
from .conftest import SimArgs
from .driver_model import run_driver_schedule

KINDS = ("raft", "paxos")
DEFAULT_SCHEDULES = {"raft": 1250, "paxos": 400}
STEPS = 200
SOAK_SCHEDULES = 3000
SOAK_STEPS = 1000
REPLAY = "pytest tests/sim/test_driver_interleaving.py -k 'schedules and {kind}' --sim-seed"


def _run(kind: str, seeds: list[int], steps: int) -> Counter[str]:
    totals: Counter[str] = Counter()
    for seed in seeds:
        try:
            totals += run_driver_schedule(seed, steps=steps, kind=kind)
        except SafetyViolation as e:
            replay = REPLAY.format(kind=kind)
            pytest.fail(f"{e}\nreplay: {replay} {seed} (steps={steps})", pytrace=False)
    return totals


@pytest.mark.parametrize("kind", KINDS)
def test_driver_interleaving_schedules(kind: str, sim_args: SimArgs) -> None:
    if sim_args.seed is not None:
        _run(kind, [sim_args.seed], SOAK_STEPS if sim_args.soak else STEPS)
        return
    n = sim_args.schedules or DEFAULT_SCHEDULES[kind]
    t0 = time.process_time()
    totals = _run(kind, list(range(n)), STEPS)
    print(
        f"\n{kind} driver interleaving: {n} schedules of {STEPS} steps, {totals['delivered']} "
        f"messages ({totals['stepped_in_flight']} stepped between ready and advance), "
        f"{totals['early_sends']} early sends, {totals['crashes']} crashes "
        f"({totals['crash_lost_txn']} lost an in-flight transaction, "
        f"{totals['crash_after_early_answers']} after answering from it, "
        f"{totals['acked_then_txn_lost']} writes acknowledged so), {totals['acked']} "
        f"writes acknowledged, {totals['power_loss_undid_txns']} power losses undid "
        f"unflushed apply-only transactions, {totals['in_flight_entries_replaced']} in-flight "
        "Readies whose "
        f"entries a step replaced, {time.process_time() - t0:.1f}s CPU"
    )
    if n >= 200:
        # The schedules must exercise what they claim to (a vacuous pass is a failure).
        for what in (
            "stepped_in_flight",
            "early_sends",
            "crash_lost_txn",
            "crash_after_early_answers",
            "acked_then_txn_lost",
            "not_durable_txns",
            "power_loss_undid_txns",
            "acked",
            "installs",
            "snapshots",
            "conf_changes_applied",
            "reads",
            "partitioned",
            "duplicated",
            "transfers",
        ):
            assert totals[what] > 0, f"no {what} in {n} schedules: {totals}"


@pytest.mark.soak
@pytest.mark.parametrize("kind", KINDS)
def test_driver_interleaving_soak(kind: str, sim_args: SimArgs) -> None:
    base = random.SystemRandom().randrange(1 << 40)
    print(f"\n{kind} driver interleaving soak: seeds from {base}, {SOAK_STEPS} steps")
    _run(kind, list(range(base, base + (sim_args.schedules or SOAK_SCHEDULES))), SOAK_STEPS)


@pytest.mark.parametrize("kind", KINDS)
def test_checks_catch_an_unsafe_driver(kind: str) -> None:
    """Sending every message before its persist (votes / promises, append / accept
    answers) must be caught: the model can fail."""
    caught = 0
    for seed in range(40):
        try:
            run_driver_schedule(seed, sabotage="early", kind=kind)
        except SafetyViolation:
            caught += 1
    assert caught > 0


@pytest.mark.parametrize("kind", KINDS)
def test_checks_catch_a_driver_that_flushes_nothing(kind: str) -> None:
    """The power-loss crashes are strong enough to matter: with no transaction durable
    (appended entries, votes and promises lost with the apply-only ones) the model must
    fail, so its passing with only the apply-only transactions left unflushed
    (kvstore.node.persist.durable) means something."""
    caught = 0
    for seed in range(40):
        try:
            run_driver_schedule(seed, sabotage="flush", kind=kind)
        except SafetyViolation:
            caught += 1
    assert caught > 0


def test_entries_replaced_during_the_persist_are_not_marked_durable() -> None:
    """The driver steps messages between ready() and advance(): a step that replaces the
    in-flight Ready's entries must leave the replacements unstable (to be persisted and
    only then acknowledged), and advance() must not mark them durable."""
    mt = MessageType
    st = MemoryStorage(voters={1, 2, 3})
    n = RawNode(Config(id=2, rng=random.Random(2)), st)
    old = tuple(Entry(term=2, index=i, data=b"old%d" % i) for i in (1, 2, 3))
    n.step(Message(type=mt.APPEND, group=0, from_=1, to=2, term=2, entries=old))
    rd1 = n.ready()
    assert [e.index for e in rd1.entries] == [1, 2, 3]
    # While the writer persists rd1, leader 3 of term 3 replaces indexes 2.. .
    new = (Entry(term=3, index=2, data=b"new2"), Entry(term=3, index=3, data=b"new3"))
    n.step(
        Message(type=mt.APPEND, group=0, from_=3, to=2, term=3, index=1, log_term=2, entries=new)
    )
    st.append(rd1.entries)  # the writer's transaction lands (stale 2@2, 3@2 included)
    st.set_hard_state(rd1.hard_state or st.hard_state)
    n.advance(rd1)
    assert n.raft.log.stable_last() <= 1  # 2@3 is not durable
    assert n.raft.log.term(3) == 3 and n.raft.log.last_index() == 3  # never the stale 3@2
    rd2 = n.ready()
    assert rd2.entries == new
    acks = [m for m in rd2.messages if m.type is mt.APPEND_RESP and m.to == 3]
    assert acks and acks[-1].index == 3 and not acks[-1].reject  # sent after rd2's persist
    st.append(rd2.entries)
    n.advance(rd2)
    assert n.raft.log.stable_last() == 3 and st.last_index() == 3 and st.term(3) == 3
