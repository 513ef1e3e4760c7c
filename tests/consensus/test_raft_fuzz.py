"""Remote junk never raises: hypothesis feeds arbitrary Raft messages to a follower,
a candidate and a leader, persisting every Ready as a driver would.
RAFT_FUZZ_EXAMPLES=5000 searches longer."""

from __future__ import annotations

import os
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.raft import RawNode
from kvstore.consensus.raft.raft import RAFT_TYPES
from kvstore.consensus.types import (
    Config,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)

small = st.integers(-1, 6)
entries = st.lists(
    st.builds(
        Entry, term=small, index=small, type=st.sampled_from(EntryType), data=st.binary(max_size=3)
    ),
    max_size=3,
).map(tuple)
snapshots = st.none() | st.builds(
    Snapshot,
    metadata=st.builds(
        SnapshotMetadata,
        index=small,
        term=small,
        conf_state=st.builds(ConfState, voters=st.frozensets(st.integers(1, 4), max_size=3)),
    ),
)
messages = st.builds(
    Message,
    type=st.sampled_from([*sorted(RAFT_TYPES), MessageType.PREPARE]),
    group=st.sampled_from([0, 0, 0, 5]),
    from_=st.integers(0, 4),
    to=st.sampled_from([1, 1, 1, 2]),
    term=small,
    log_term=small,
    index=small,
    entries=entries,
    commit=small,
    reject=st.booleans(),
    reject_hint=small,
    snapshot=snapshots,
    context=st.sampled_from([b"", b"r", b"transfer"]),
)


def drive(n: RawNode, stor: MemoryStorage) -> None:
    while n.has_ready():
        rd = n.ready()
        if rd.snapshot is not None:
            stor.apply_snapshot(rd.snapshot)
        stor.append(rd.entries)
        if rd.hard_state is not None:
            stor.set_hard_state(rd.hard_state)
        n.advance(rd)


@settings(
    max_examples=int(os.environ.get("RAFT_FUZZ_EXAMPLES", "80")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    role=st.sampled_from(["follower", "candidate", "leader"]), msgs=st.lists(messages, max_size=25)
)
def test_junk_never_raises(role: str, msgs: list[Message]) -> None:
    stor = MemoryStorage(voters={1, 2, 3})
    n = RawNode(Config(id=1, pre_vote=False, rng=random.Random(0)), stor)
    if role != "follower":
        n.campaign()
        drive(n, stor)
    if role == "leader":
        n.step(Message(type=MessageType.VOTE_RESP, group=0, from_=2, to=1, term=1))
        drive(n, stor)
        n.propose(b"x")
    for m in msgs:
        n.step(m)
        drive(n, stor)
        n.tick()
    s = n.status()
    assert s.applied <= s.commit <= s.last_index
