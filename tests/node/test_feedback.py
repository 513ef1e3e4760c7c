"""Transport feedback reaches the core: a lost message makes the leader probe its peer,
and a snapshot transfer's outcome ends the leader's wait for it."""

from __future__ import annotations

import random

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.raft import RawNode
from kvstore.consensus.types import Config, Message, MessageType, Role
from kvstore.node.feedback import TransportFeedback

MT = MessageType


def leader_of_two() -> RawNode:
    """Node 1 leads voters {1, 2} with node 2 acknowledged (its progress replicating)."""
    st = MemoryStorage({1, 2})
    n = RawNode(Config(id=1, group=3, pre_vote=False, rng=random.Random(1)), st)
    n.campaign()
    n.step(Message(type=MT.VOTE_RESP, group=3, from_=2, to=1, term=1))
    assert n.status().role is Role.LEADER
    rd = n.ready()
    st.append(rd.entries)
    n.advance(rd)
    n.step(Message(type=MT.APPEND_RESP, group=3, from_=2, to=1, term=1, index=1))
    return n


def states(n: RawNode) -> dict[int, tuple[str, int]]:
    return {p.id: (p.state, p.next) for p in n.status(progress=True).progress}


def test_lost_messages_make_the_leader_probe() -> None:
    n = leader_of_two()
    assert states(n) == {1: ("replicate", 2), 2: ("replicate", 2)}
    pokes: list[int] = []
    fb = TransportFeedback(lambda: pokes.append(1))
    fb.lost([Message(type=MT.APPEND, group=3, from_=1, to=2, term=1, index=1)])
    assert pokes
    fb.report({3: n})
    assert states(n)[2] == ("probe", 2)
    fb.report({3: n})  # reported once: nothing left
    fb.lost([Message(type=MT.APPEND, group=9, from_=1, to=2)])
    fb.report({3: n})  # another group's loss is not this core's business


def test_a_failed_snapshot_transfer_ends_the_wait() -> None:
    n = leader_of_two()
    n.raft.tracker.progress[2].need_snapshot(1)  # as when the entries were compacted
    assert states(n)[2] == ("snapshot", 2)
    fb = TransportFeedback(lambda: None)
    fb.snapshot(3, 2, False)
    fb.report({3: n})
    p = {x.id: x for x in n.status(progress=True).progress}[2]
    assert (p.state, p.next) == ("probe", p.match + 1)
