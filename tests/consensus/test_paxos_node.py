"""PaxosNode against the Core contract: local misuse raises, remote junk never does,
ProposalId matches the committed entry, the Ready rule holds."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.paxos import PaxosNode
from kvstore.consensus.paxos import ballot as ballots
from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    Config,
    ConsensusError,
    Entry,
    EntryType,
    Message,
    MessageType,
    NotLeaderError,
    ProposalDroppedError,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
)

MT = MessageType


def node(id_: int = 1, voters: set[int] | None = None) -> tuple[PaxosNode, MemoryStorage]:
    st_ = MemoryStorage(voters=voters or {1, 2, 3})
    return PaxosNode(Config(id=id_, rng=random.Random(id_)), st_), st_


def persist(n: PaxosNode, s: MemoryStorage) -> Ready:
    rd = n.ready()
    if rd.snapshot is not None:
        s.apply_snapshot(rd.snapshot)
    s.append(rd.entries)
    if rd.hard_state is not None:
        s.set_hard_state(rd.hard_state)
    n.advance(rd)
    return rd


def test_rejects_node_ids_a_ballot_cannot_hold() -> None:
    with pytest.raises(ValueError):
        PaxosNode(Config(id=1 << 16), MemoryStorage(voters={1}))


def test_single_voter_commits_its_own_proposal_after_persisting_it() -> None:
    n, s = node(1, {1})
    n.campaign()
    assert n.status().role is Role.LEADER
    persist(n, s)
    pid = n.propose(b"hello")
    rd = persist(n, s)
    assert rd.entries and not rd.committed  # not chosen before it is durable here
    rd = persist(n, s)
    assert [(e.term, e.index, e.data) for e in rd.committed] == [(pid.term, pid.index, b"hello")]
    assert rd.hard_state is not None and rd.hard_state.commit == pid.index


def test_local_misuse_raises() -> None:
    n, _ = node(2)
    with pytest.raises(NotLeaderError):
        n.propose(b"x")
    with pytest.raises(NotLeaderError):
        n.read_index(b"r")
    with pytest.raises(NotLeaderError):
        n.transfer_leadership(3)
    learner, _ = node(4)
    with pytest.raises(ConsensusError):
        learner.campaign()


def test_one_conf_change_at_a_time_and_never_zero_voters() -> None:
    n, s = node(1, {1})
    n.campaign()
    persist(n, s)
    with pytest.raises(ProposalDroppedError):
        n.propose_conf_change(ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=1))
    n.propose_conf_change(ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=2))
    with pytest.raises(ProposalDroppedError):
        n.propose_conf_change(ConfChange(type=ConfChangeType.ADD_NODE, node_id=2))


def test_wrong_recipient_and_foreign_group_are_counted() -> None:
    n, _ = node(1)
    n.step(Message(type=MT.PREPARE, group=0, from_=2, to=3, term=ballots.make(1, 2), index=1))
    n.step(Message(type=MT.PREPARE, group=7, from_=2, to=1, term=ballots.make(1, 2), index=1))
    assert n.dropped == {"wrong_recipient": 1, "foreign_group": 1}
    assert not n.has_ready()


def test_promise_and_accept_leave_only_after_their_state_is_persisted() -> None:
    n, _ = node(2)
    b = ballots.make(1, 1)
    n.step(Message(type=MT.PREPARE, group=0, from_=1, to=2, term=b, index=1))
    rd = n.ready()
    assert rd.hard_state is not None and rd.hard_state.term == b
    assert [m.type for m in rd.messages] == [MT.PROMISE]
    n.advance(rd)
    e = Entry(term=b, index=1, data=b"%d:v" % b)
    n.step(Message(type=MT.ACCEPT, group=0, from_=1, to=2, term=b, index=0, entries=(e,)))
    rd = n.ready()
    assert rd.entries == (e,)
    assert [(m.type, m.index) for m in rd.messages] == [(MT.ACCEPTED, 1)]


def test_a_lower_ballot_is_refused_with_the_promise() -> None:
    n, _ = node(2)
    hi, lo = ballots.make(2, 3), ballots.make(1, 1)
    n.step(Message(type=MT.PREPARE, group=0, from_=3, to=2, term=hi, index=1))
    n.advance(n.ready())
    e = Entry(term=lo, index=1, data=b"x")
    n.step(Message(type=MT.ACCEPT, group=0, from_=1, to=2, term=lo, index=0, entries=(e,)))
    rd = n.ready()
    assert not rd.entries
    assert [(m.type, m.term, m.reject) for m in rd.messages] == [(MT.ACCEPTED, hi, True)]


def test_snapshot_keeps_accepted_slots_after_it() -> None:
    n, s = node(2)
    b = ballots.make(1, 1)
    ents = tuple(Entry(term=b, index=i, data=b"%d:v%d" % (b, i)) for i in (1, 2, 3))
    n.step(Message(type=MT.ACCEPT, group=0, from_=1, to=2, term=b, index=0, entries=ents))
    persist(n, s)
    snap = Snapshot(metadata=SnapshotMetadata(index=2, term=b), data=b"img")
    n.step(Message(type=MT.PAXOS_SNAPSHOT, group=0, from_=1, to=2, term=b, snapshot=snap))
    rd = persist(n, s)
    assert rd.snapshot == snap and rd.entries == ents[2:]
    assert s.last_index() == 3 and s.entries(3, 4) == [ents[2]]


entry = st.builds(
    Entry,
    term=st.integers(-2, 1 << 18),
    index=st.integers(-2, 6),
    type=st.sampled_from(EntryType),
    data=st.binary(max_size=12),
)
message = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    group=st.sampled_from((0, 0, 0, 5)),
    from_=st.integers(-1, 4),
    to=st.sampled_from((1, 1, 1, 2)),
    term=st.one_of(
        st.integers(-1, 4),
        st.sampled_from([ballots.make(r, n) for r in (0, 1, 2) for n in (1, 2, 3)]),
    ),
    log_term=st.integers(-1, 3),
    index=st.integers(-1, 6),
    entries=st.lists(entry, max_size=4).map(tuple),
    commit=st.integers(-1, 6),
    reject=st.booleans(),
    reject_hint=st.integers(-1, 6),
    snapshot=st.none()
    | st.builds(
        Snapshot,
        metadata=st.builds(SnapshotMetadata, index=st.integers(-1, 6), term=st.integers(0, 3)),
    ),
    context=st.sampled_from((b"", b"transfer", b"commit", b"reaccept", b"read:1", b"read:x")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(message, max_size=30), st.booleans())
def test_remote_junk_never_raises(msgs: list[Message], lead: bool) -> None:
    """Whatever arrives, step() returns; the Ready loop keeps working."""
    n, s = node(1)
    if lead:
        n.campaign()
        persist(n, s)
        n.step(Message(type=MT.PROMISE, group=0, from_=2, to=1, term=ballots.make(1, 1), index=1))
        n.propose(b"x")
    for m in msgs:
        n.step(m)
        if n.has_ready():
            persist(n, s)
        n.tick()
    assert n.status().term >= 0


def test_phase1_counts_conf_changes_its_promises_reveal() -> None:
    """A promise reporting an accepted ADD_NODE 4 makes the quorum a majority of
    {1,2,3} AND {1,2,3,4}: two promises are not enough, three are."""
    n, s = node(1)
    n.campaign()
    persist(n, s)
    b = n.status().term
    cc = ConfChange(type=ConfChangeType.ADD_NODE, node_id=4).encode()
    reported = (Entry(term=ballots.make(0, 3), index=1, type=EntryType.CONF_CHANGE, data=cc),)
    n.step(Message(type=MT.PROMISE, group=0, from_=2, to=1, term=b, index=1, entries=reported))
    assert n.status().role is Role.CANDIDATE
    n.step(Message(type=MT.PROMISE, group=0, from_=3, to=1, term=b, index=1))
    assert n.status().role is Role.LEADER
    rd = persist(n, s)
    assert [(e.index, e.type, e.term) for e in rd.entries] == [(1, EntryType.CONF_CHANGE, b)]
    assert {m.to for m in rd.messages if m.type is MT.ACCEPT} == {2, 3, 4}
