"""Joint consensus in the contract: the JOINT / LEAVE_JOINT encoding, the Raft rules for
entering and leaving a joint configuration, and Multi-Paxos refusing it by name.

The end-to-end behaviour (quorums of both halves, auto-leave, a leader replacing
itself, a leader dying mid-change) is in transcripts/raft/joint.txt.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.paxos import PaxosNode
from kvstore.consensus.raft import confchange
from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    ConsensusError,
    Role,
)

T = ConfChangeType
singles = st.builds(
    ConfChange,
    type=st.sampled_from((T.ADD_NODE, T.REMOVE_NODE, T.ADD_LEARNER)),
    node_id=st.integers(1, 1 << 40),
    context=st.binary(max_size=40),
)


@given(st.lists(singles, min_size=1, max_size=5))
def test_joint_change_round_trips(parts: list[ConfChange]) -> None:
    cc = ConfChange(type=T.JOINT, changes=tuple(parts))
    assert ConfChange.decode(cc.encode()) == cc
    assert cc.singles() == tuple(parts)
    leave = ConfChange(type=T.LEAVE_JOINT)
    assert ConfChange.decode(leave.encode()) == leave and leave.singles() == ()


def test_joint_change_decoding_refuses_junk() -> None:
    good = ConfChange(type=T.JOINT, changes=(ConfChange(type=T.ADD_NODE, node_id=4),)).encode()
    with pytest.raises(ValueError, match="truncated"):
        ConfChange.decode(good[:-1])
    nested = ConfChange(type=T.JOINT, changes=(ConfChange(type=T.LEAVE_JOINT),)).encode()
    with pytest.raises(ValueError, match="single changes only"):
        ConfChange.decode(nested)


def cs(
    voters: set[int],
    learners: frozenset[int] | set[int] = frozenset(),
    outgoing: frozenset[int] | set[int] = frozenset(),
) -> ConfState:
    return ConfState(
        voters=frozenset(voters), learners=frozenset(learners), voters_outgoing=frozenset(outgoing)
    )


def joint(*parts: tuple[T, int]) -> ConfChange:
    return ConfChange(type=T.JOINT, changes=tuple(ConfChange(type=t, node_id=n) for t, n in parts))


def test_enter_and_leave_joint() -> None:
    start = cs({1, 2, 3}, {4})
    j = confchange.apply(start, joint((T.ADD_NODE, 4), (T.REMOVE_NODE, 3)))
    assert j == cs({1, 2, 4}, outgoing={1, 2, 3})
    assert confchange.apply(j, ConfChange(type=T.LEAVE_JOINT)) == cs({1, 2, 4})
    # Demotion: the voter stays in the outgoing half, and is a learner once it is left.
    d = confchange.apply(start, joint((T.ADD_LEARNER, 2), (T.ADD_NODE, 4)))
    assert d == cs({1, 3, 4}, {2}, {1, 2, 3})
    assert confchange.apply(d, ConfChange(type=T.LEAVE_JOINT)) == cs({1, 3, 4}, {2})
    # A single demotion removes one voter: allowed one server at a time too.
    assert confchange.apply(start, ConfChange(type=T.ADD_LEARNER, node_id=3)) == cs({1, 2}, {3, 4})


@pytest.mark.parametrize(
    ("start", "change", "error"),
    [
        (cs({1, 2, 3}, outgoing={1, 2}), joint((T.ADD_NODE, 4)), "configuration is joint"),
        (
            cs({1, 2, 3}, outgoing={1, 2}),
            ConfChange(type=T.ADD_NODE, node_id=4),
            "configuration is joint",
        ),
        (cs({1, 2, 3}), ConfChange(type=T.LEAVE_JOINT), "not joint"),
        (cs({1, 2, 3}), ConfChange(type=T.JOINT), "at least one change"),
        (cs({1}), joint((T.ADD_LEARNER, 1)), "last voter"),
        (cs({1, 2}), joint((T.REMOVE_NODE, 1), (T.REMOVE_NODE, 2)), "last voter"),
        (cs({1, 2}), joint((T.ADD_NODE, 3), (T.ADD_NODE, 3)), "already a voter"),
        (cs({1, 2}), joint((T.ADD_NODE, 0)), "invalid node id"),
    ],
)
def test_invalid_changes_are_refused_and_apply_as_nothing(
    start: ConfState, change: ConfChange, error: str
) -> None:
    with pytest.raises(ConsensusError, match=error):
        confchange.validate(start, change)
    assert confchange.apply(start, change) == start


def test_paxos_refuses_joint_changes_and_demotion_by_name() -> None:
    n = PaxosNode(Config(id=1, rng=random.Random(1)), MemoryStorage(voters={1}))
    n.campaign()
    assert n.status().role is Role.LEADER
    with pytest.raises(ConsensusError, match=r"one member at a time.*raft only"):
        n.propose_conf_change(joint((T.ADD_NODE, 2), (T.REMOVE_NODE, 1)))
    with pytest.raises(ConsensusError, match="one member at a time"):
        n.propose_conf_change(ConfChange(type=T.LEAVE_JOINT))
    with pytest.raises(ConsensusError, match="cannot demote voter 1"):
        n.propose_conf_change(ConfChange(type=T.ADD_LEARNER, node_id=1))
