"""The join contract of kvstore/consensus/types.py, held against both cores: a node with
no membership (started with --join) never campaigns, even when the entries in its log
would name it a voter (a crash between accepting them and being told the membership).
The message flow of a join is in the transcripts (transcripts/*/join.txt)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable

import pytest

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.paxos import PaxosNode
from kvstore.consensus.raft import RawNode
from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    Config,
    ConsensusError,
    Core,
    Entry,
    EntryType,
    HardState,
    LogStorage,
    MessageType,
    Role,
)

CORES: dict[str, Callable[[Config, LogStorage], Core]] = {"raft": RawNode, "paxos": PaxosNode}
CAMPAIGN = {MessageType.PRE_VOTE, MessageType.VOTE, MessageType.PREPARE}


def conf_entry(index: int, kind: ConfChangeType) -> Entry:
    cc = ConfChange(type=kind, node_id=4)
    return Entry(term=65537, index=index, type=EntryType.CONF_CHANGE, data=cc.encode())


@pytest.mark.parametrize("kind", sorted(CORES))
def test_a_joiner_never_campaigns_even_if_its_log_names_it_a_voter(kind: str) -> None:
    st = MemoryStorage()  # no membership: as `kvstore serve --join` starts a node
    st.append([conf_entry(1, ConfChangeType.ADD_LEARNER), conf_entry(2, ConfChangeType.ADD_NODE)])
    st.set_hard_state(HardState(term=65537))
    core = CORES[kind](Config(id=4, rng=random.Random(4)), st)
    with contextlib.suppress(ConsensusError):  # Paxos refuses, Raft ignores it
        core.campaign()
    for _ in range(200):
        assert core.status().role in (Role.FOLLOWER, Role.LEARNER)
        while core.has_ready():
            rd = core.ready()
            assert not [m for m in rd.messages if m.type in CAMPAIGN], rd.messages
            assert not rd.committed, "it learned a commit with no membership"
            core.advance(rd)
        core.tick()
