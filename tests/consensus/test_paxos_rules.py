"""Property tests of the Paxos building blocks: ballot order, the acceptor's rules,
phase 1 recovery and the quorum math (hypothesis; fastest tests first)."""

from __future__ import annotations

import itertools

from hypothesis import example, given, settings
from hypothesis import strategies as st

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.paxos import ballot as ballots
from kvstore.consensus.paxos import quorum, value
from kvstore.consensus.paxos.acceptor import Acceptor, Outcome
from kvstore.consensus.paxos.log import SlotLog
from kvstore.consensus.paxos.recovery import Promise, recover
from kvstore.consensus.types import Entry, EntryType, Snapshot, SnapshotMetadata

rounds = st.integers(min_value=0, max_value=1 << 40)
nodes = st.integers(min_value=1, max_value=ballots.MAX_NODE_ID)


# -- ballots ------------------------------------------------------------------------
@given(rounds, nodes, rounds, nodes)
def test_ballot_orders_like_the_pair(r1: int, n1: int, r2: int, n2: int) -> None:
    a, b = ballots.make(r1, n1), ballots.make(r2, n2)
    assert (a < b) == ((r1, n1) < (r2, n2))
    assert (a == b) == ((r1, n1) == (r2, n2))
    assert (ballots.round_of(a), ballots.node_of(a)) == (r1, n1)


@given(st.integers(min_value=0, max_value=1 << 50), nodes)
def test_next_ballot_is_higher_and_owned(seen: int, node: int) -> None:
    b = ballots.next_after(seen, node)
    assert b > seen and ballots.node_of(b) == node and ballots.is_valid(b)


def test_ballot_rejects_unencodable_node_ids() -> None:
    for bad in (0, -1, ballots.MAX_NODE_ID + 1):
        try:
            ballots.make(1, bad)
        except ValueError:
            continue
        raise AssertionError(f"node id {bad} accepted")
    assert not ballots.is_valid(0) and not ballots.is_valid(1 << ballots.NODE_BITS)


# -- stored values --------------------------------------------------------------------
@given(
    st.integers(min_value=1, max_value=1 << 63),
    st.binary(max_size=40) | st.binary(max_size=8).map(lambda b: b"~" + b),
)
@example(origin=3, data=b"~12:x")
def test_value_keeps_origin_across_reaccepts(origin: int, data: bytes) -> None:
    e = value.new_value(origin, 7, data, EntryType.NORMAL)
    assert value.chosen(e) == Entry(term=origin, index=7, data=data)
    again = value.reaccept(value.reaccept(e, origin + 5), origin + 9)
    assert again.term == origin + 9
    assert value.chosen(again) == Entry(term=origin, index=7, data=data)
    assert value.payload(again) == data


# -- quorum math ----------------------------------------------------------------------
def _naive_quorum_index(configs: list[frozenset[int]], match: dict[int, int]) -> int:
    best = 0
    for idx in sorted(set(match.values()) | {0}):
        acks = {n for n, m in match.items() if m >= idx}
        if all(len(c & acks) * 2 > len(c) for c in configs if c):
            best = idx
    return best


@given(
    st.lists(st.frozensets(st.integers(1, 6), min_size=1, max_size=5), min_size=1, max_size=3),
    st.dictionaries(st.integers(1, 6), st.integers(0, 20)),
)
def test_quorum_index_matches_naive(configs: list[frozenset[int]], match: dict[int, int]) -> None:
    assert quorum.quorum_index(configs, match) == _naive_quorum_index(configs, match)


def test_has_quorum_needs_every_config() -> None:
    old, new = frozenset({1, 2, 3}), frozenset({1, 2, 3, 4})
    assert quorum.has_quorum([old], {1, 2})
    assert not quorum.has_quorum([old, new], {1, 2})
    assert quorum.has_quorum([old, new], {1, 2, 4})
    assert not quorum.has_quorum([frozenset()], {1})


# -- the acceptor ---------------------------------------------------------------------
ops = st.lists(
    st.one_of(
        st.tuples(st.just("prepare"), st.integers(1, 12)),
        st.tuples(st.just("accept"), st.integers(1, 12), st.integers(0, 8), st.integers(0, 4)),
        st.tuples(st.just("reaccept"), st.integers(1, 12), st.integers(0, 8), st.integers(0, 10)),
        st.tuples(st.just("learn"), st.integers(0, 12)),
        st.tuples(st.just("persist")),
        st.tuples(st.just("snapshot"), st.integers(1, 10)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_acceptor_rules(script: list[tuple[int | str, ...]]) -> None:
    """Promises never go down; nothing below the promise is accepted; an accepted
    value stays until a higher-or-equal ballot replaces it or a snapshot covers it;
    chosen slots never change; a promise reports exactly the log."""
    storage = MemoryStorage(voters={1, 2, 3})
    log = SlotLog(storage)
    acc = Acceptor(log, 0, 0)
    model: dict[int, Entry] = {}
    counter = itertools.count()
    for op in script:
        before = acc.promised
        if op[0] == "prepare":
            b = int(op[1])
            assert acc.promise(b) == (b >= before)
        elif op[0] == "accept":
            b, prev, n = int(op[1]), int(op[2]), int(op[3])
            ents = tuple(
                value.new_value(b, prev + 1 + i, b"v%d" % next(counter), EntryType.NORMAL)
                for i in range(n)
            )
            through = acc.accepted_through
            got = acc.accept(b, prev, ents)
            if b < before:
                assert got is Outcome.STALE_BALLOT
            elif prev > (through if b == before else acc.commit):
                assert got is Outcome.GAP
            else:
                assert got is Outcome.OK
                for e in ents:
                    if e.index > acc.commit:
                        model[e.index] = e
        elif op[0] == "reaccept":
            b, prev, hi = int(op[1]), int(op[2]), int(op[3])
            through, commit = acc.accepted_through, acc.commit
            got = acc.reaccept(b, prev, hi)
            if b < before:
                assert got is Outcome.STALE_BALLOT
            elif b > before or prev > through or hi > log.last_index():
                assert got is Outcome.GAP
            else:
                assert got is Outcome.OK
                for i in range(max(prev + 1, commit + 1), hi + 1):
                    model[i] = value.reaccept(model[i], b) if i in model else log.get(i)
                    assert value.payload(log.get(i)) == value.payload(model[i])
        elif op[0] == "learn":
            old = acc.commit
            acc.learn(int(op[1]))
            assert old <= acc.commit <= max(old, acc.accepted_through)
        elif op[0] == "persist":
            if log.pending_snapshot is not None:
                storage.apply_snapshot(log.pending_snapshot)
                log.snapshot_stable(log.pending_snapshot)
            ents = tuple(log.unstable)
            storage.append(ents)
            log.stable_to(ents)
            assert not log.unstable
        elif op[0] == "snapshot":
            s = int(op[1])
            snap = Snapshot(metadata=SnapshotMetadata(index=s, term=acc.promised))
            if acc.install(snap):
                model = {i: e for i, e in model.items() if i > s}
        assert acc.promised >= before
        assert acc.commit <= acc.accepted_through <= max(log.last_index(), acc.commit)
        for i, e in model.items():
            if i >= log.first_index() and i > acc.commit:
                assert log.get(i) == e, f"slot {i} lost its accepted value"
        report = acc.report(1)
        lo = log.first_index()
        assert [e.index for e in report.entries] == list(range(lo, log.last_index() + 1))


# -- phase 1 recovery -------------------------------------------------------------------
def _promise(start: int, commit: int, terms: list[int]) -> Promise:
    ents = tuple(
        Entry(term=t, index=start + i, data=value.wrap(t, b"%d@%d" % (t, start + i)))
        for i, t in enumerate(terms)
    )
    return Promise(commit=commit, entries=ents)


promises = st.lists(
    st.tuples(st.integers(0, 3), st.lists(st.integers(1, 9), max_size=6)), min_size=1, max_size=4
)


@given(promises)
def test_recovery_adopts_the_highest_ballot(raw: list[tuple[int, list[int]]]) -> None:
    start, new_ballot = 1, 100
    ps = [_promise(start, min(c, len(t)), t) for c, t in raw]
    rec = recover(start, new_ballot, ps)
    assert not rec.incomplete
    top = max(p.commit for p in ps)
    assert rec.commit == top
    last = max(p.last() for p in ps)
    assert [e.index for e in rec.entries] == list(range(start, last + 1))
    for e in rec.entries:
        reported = [x for p in ps if (x := p.at(e.index)) is not None]
        if e.index <= top:
            # Known chosen: taken as is from a promiser that knows it.
            assert any(p.commit >= e.index and p.at(e.index) == e for p in ps)
            continue
        assert e.term == new_ballot
        if not reported:
            assert e.type is EntryType.NOOP
        else:
            best = max(reported, key=lambda x: x.term)
            assert value.payload(e) == value.payload(best)
            assert value.origin_of(e) == value.origin_of(best)


def test_recovery_fills_gaps_with_noops() -> None:
    ps = [
        Promise(commit=0, entries=(Entry(term=5, index=1, data=value.wrap(5, b"a")),)),
        Promise(
            commit=0,
            entries=(
                Entry(term=3, index=1, data=value.wrap(3, b"b")),
                Entry(term=3, index=2, data=value.wrap(3, b"c")),
            ),
        ),
        Promise(commit=0, entries=()),
    ]
    # A promiser that reports slot 3 but not 2 cannot exist (logs are contiguous),
    # so a gap shows up only as a slot nobody reported below a reported one.
    ps.append(Promise(commit=0, entries=(Entry(term=2, index=4, data=value.wrap(2, b"d")),)))
    rec = recover(1, 9, ps)
    got = [(e.index, e.type, value.payload(e)) for e in rec.entries]
    assert got == [
        (1, EntryType.NORMAL, b"a"),
        (2, EntryType.NORMAL, b"c"),
        (3, EntryType.NOOP, b""),
        (4, EntryType.NORMAL, b"d"),
    ]


def test_recovery_is_incomplete_without_a_chosen_value() -> None:
    # The promiser knows slots <= 5 chosen but compacted them: we need its snapshot.
    ps = [
        Promise(commit=5, entries=(Entry(term=2, index=6, data=value.wrap(2, b"x")),)),
        Promise(commit=0, entries=()),
    ]
    rec = recover(1, 9, ps)
    assert rec.incomplete and rec.commit == 0


# -- the leader's per-acceptor progress ------------------------------------------------
def test_progress_table_has_every_state_and_event() -> None:
    from kvstore.consensus.paxos.progress import TRANSITIONS, Event, State

    assert set(TRANSITIONS) == set(itertools.product(State, Event))


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["on", "sent", "acked"]),
            st.integers(min_value=0, max_value=5),  # which Event, for "on"
            st.integers(min_value=0, max_value=30),
        ),
        max_size=40,
    )
)
def test_progress_takes_any_event_in_any_state(ops: list[tuple[str, int, int]]) -> None:
    """Callers need not check the state first: every event is defined in every state; one
    that means nothing there changes nothing, and the flow-control invariants hold."""
    from kvstore.consensus.paxos.progress import TRANSITIONS, Event, Progress, State

    events = list(Event)
    pr = Progress(match=0, next=1)
    for op, ev, n in ops:
        if op == "on":
            before = (pr.state, pr.probe_sent, list(pr.inflight), pr.inflight_bytes)
            to = TRANSITIONS[(pr.state, events[ev])]
            pr.on(events[ev])
            if to is None:
                assert (pr.state, pr.probe_sent, list(pr.inflight), pr.inflight_bytes) == before
            else:
                assert pr.state is to and not pr.probe_sent
        elif op == "sent" and not pr.paused(4, 1 << 20):
            pr.sent(max(pr.next, n), n)
        elif op == "acked":
            pr.acked(n)
        if pr.state is not State.REPLICATE:
            assert not pr.inflight and pr.inflight_bytes == 0
        assert pr.inflight_bytes == sum(size for _, size in pr.inflight)
        assert pr.next > pr.match
