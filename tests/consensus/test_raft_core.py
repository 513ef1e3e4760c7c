"""RawNode contract details: Ready ordering rules, restart, local errors, dropped junk."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.raft import RawNode
from kvstore.consensus.types import (
    Config,
    ConsensusError,
    Entry,
    HardState,
    Message,
    MessageType,
    NotLeaderError,
    ProposalDroppedError,
    Ready,
    Role,
)

MT = MessageType


def node(
    i: int,
    voters: Iterable[int] = (1, 2, 3),
    *,
    pre_vote: bool = True,
    max_uncommitted_bytes: int = 64 << 20,
) -> tuple[RawNode, MemoryStorage]:
    st = MemoryStorage(voters=set(voters))
    cfg = Config(
        id=i,
        group=7,
        rng=random.Random(i),
        pre_vote=pre_vote,
        max_uncommitted_bytes=max_uncommitted_bytes,
    )
    return RawNode(cfg, st), st


def persist(n: RawNode, st: MemoryStorage) -> Ready:
    rd = n.ready()
    if rd.snapshot:
        st.apply_snapshot(rd.snapshot)
    st.append(rd.entries)
    if rd.hard_state:
        st.set_hard_state(rd.hard_state)
    n.advance(rd)
    return rd


def msg(type: MessageType, frm: int, to: int, **kw: object) -> Message:
    return Message(type=type, group=7, from_=frm, to=to, **kw)  # type: ignore[arg-type]


def leader_of_three() -> tuple[RawNode, MemoryStorage]:
    """Node 1 elected leader of (1,2,3) by hand-delivered votes, its no-op persisted."""
    n, st = node(1, pre_vote=False)
    n.campaign()
    persist(n, st)
    n.step(msg(MT.VOTE_RESP, 2, 1, term=1))
    assert n.status().role is Role.LEADER
    return n, st


def test_single_voter_commits_only_after_advance() -> None:
    n, st = node(1, voters=(1,))
    n.campaign()
    rd = persist(n, st)  # becomes leader, no-op appended
    assert rd.entries and not rd.committed
    rd = persist(n, st)
    assert [e.index for e in rd.committed] == [1]
    n.propose(b"x")
    rd = n.ready()
    assert [e.data for e in rd.entries] == [b"x"] and not rd.committed
    st.append(rd.entries)
    n.advance(rd)
    assert [e.data for e in persist(n, st).committed] == [b"x"]


def test_leader_counts_itself_only_after_advance() -> None:
    n, st = leader_of_three()
    persist(n, st)  # no-op durable
    n.step(msg(MT.APPEND_RESP, 2, 1, term=1, index=1))
    assert n.status().commit == 1
    persist(n, st)
    pid = n.propose(b"x")
    n.step(msg(MT.APPEND_RESP, 2, 1, term=1, index=pid.index))
    # One follower acked, but the leader's own copy is not durable yet: 1 of 3.
    assert n.status().commit == 1
    rd = n.ready()
    assert not rd.committed
    st.append(rd.entries)
    n.advance(rd)
    assert n.status().commit == pid.index


def test_follower_committed_only_durable_or_same_ready_entries() -> None:
    n, st = node(2)
    ents = (Entry(term=1, index=1), Entry(term=1, index=2, data=b"a"))
    n.step(msg(MT.APPEND, 1, 2, term=1, entries=ents, commit=2))
    rd = n.ready()
    # Entries and their commit in one Ready: allowed, the driver persists them first.
    assert [e.index for e in rd.entries] == [1, 2]
    assert [e.index for e in rd.committed] == [1, 2]
    st.append(rd.entries)
    n.advance(rd)
    # A Ready taken before the previous one is advanced must not commit its entries.
    n.step(msg(MT.APPEND, 1, 2, term=1, index=2, log_term=1, entries=(Entry(term=1, index=3),)))
    rd1 = n.ready()
    n.step(msg(MT.HEARTBEAT, 1, 2, term=1, commit=3))
    rd2 = n.ready()
    assert [e.index for e in rd1.entries] == [3] and not rd2.entries
    assert not rd2.committed
    st.append(rd1.entries)
    n.advance(rd1)
    n.advance(rd2)
    assert [e.index for e in n.ready().committed] == [3]


def test_restart_resumes_hard_state_and_applied() -> None:
    st = MemoryStorage(voters={1, 2, 3})
    st.append([Entry(term=1, index=i, data=bytes([i])) for i in range(1, 6)])
    st.set_hard_state(HardState(term=3, vote=2, commit=4))
    n = RawNode(Config(id=1, group=7, applied=2), st)
    s = n.status()
    assert (s.term, s.commit, s.applied, s.last_index, s.leader) == (3, 4, 2, 5, 0)
    rd = n.ready()
    assert [e.index for e in rd.committed] == [3, 4]
    assert rd.hard_state is None  # unchanged from storage
    # It already voted for 2 in term 3: a vote request from 3 in term 3 is refused.
    n.advance(rd)
    n.step(msg(MT.VOTE, 3, 1, term=3, index=9, log_term=3))
    (resp,) = n.ready().messages
    assert resp.type is MT.VOTE_RESP and resp.reject


def test_restart_with_bad_hard_state_is_a_local_error() -> None:
    st = MemoryStorage(voters={1})
    st.set_hard_state(HardState(term=1, commit=5))
    with pytest.raises(ConsensusError):
        RawNode(Config(id=1), st)


@pytest.mark.parametrize(
    ("m", "reason"),
    [
        (
            msg(MT.APPEND, 1, 2, term=1).__class__(type=MT.APPEND, group=8, from_=1, to=2),
            "wrong_group",
        ),
        (msg(MT.APPEND, 1, 3, term=1), "misrouted"),
        (msg(MT.APPEND, 0, 2, term=1), "bad_sender"),
        (msg(MT.APPEND, 1, 2, term=1, index=-1), "malformed"),
        (msg(MT.APPEND, 1, 2, term=1, entries=(Entry(term=1, index=5),)), "malformed"),
        (msg(MT.APPEND, 1, 2, term=1, entries=(Entry(term=2, index=1),)), "malformed"),
        (msg(MT.HEARTBEAT_RESP, 9, 2, term=5), "unknown_node"),
        (msg(MT.PREPARE, 1, 2, term=5), "unknown_type"),
        (msg(MT.SNAPSHOT, 1, 2, term=5), "malformed"),
    ],
)
def test_junk_is_dropped_and_counted(m: Message, reason: str) -> None:
    n, _ = node(2)
    before = n.status()
    n.step(m)
    assert n.dropped[reason] == 1
    assert n.status() == before


def test_stale_term_is_dropped_but_answered() -> None:
    n, _ = node(2)
    n.step(msg(MT.HEARTBEAT, 1, 2, term=5))
    n.ready()
    n.step(msg(MT.APPEND, 3, 2, term=4, index=0))
    assert n.dropped["stale_term"] == 1
    (resp,) = n.ready().messages
    assert (resp.type, resp.term, resp.to) == (MT.APPEND_RESP, 5, 3)


def test_local_misuse_raises() -> None:
    n, _ = node(2)
    with pytest.raises(NotLeaderError):
        n.propose(b"x")
    with pytest.raises(NotLeaderError):
        n.read_index(b"r")
    with pytest.raises(ConsensusError):
        RawNode(Config(id=0), MemoryStorage())
    with pytest.raises(ConsensusError):
        RawNode(Config(id=1, election_tick=1, heartbeat_tick=1), MemoryStorage())


def test_uncommitted_bytes_cap_drops_proposals() -> None:
    n, _ = node(1, max_uncommitted_bytes=1000, pre_vote=False)
    n.campaign()
    n.step(msg(MT.VOTE_RESP, 2, 1, term=1))
    n.propose(b"a" * 600)
    with pytest.raises(ProposalDroppedError):
        n.propose(b"b" * 600)


def test_every_message_carries_the_group() -> None:
    n, _ = leader_of_three()
    n.propose(b"x")
    n.tick()
    assert {m.group for m in n.ready().messages} == {7}


def test_bogus_ack_past_the_log_is_dropped() -> None:
    n, st = leader_of_three()
    persist(n, st)
    n.step(msg(MT.APPEND_RESP, 2, 1, term=1, index=10**9))
    assert n.dropped["ack_past_log"] == 1
    n.tick()
    n.propose(b"x")
    assert all(m.type in (MT.APPEND, MT.HEARTBEAT) for m in n.ready().messages)
