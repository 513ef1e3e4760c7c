"""A vote request for a group a node never held starts a replica that answers it, and a
split that a lagging parent applies later keeps that replica's vote (FINDINGS F13: paxos
seed 30422 of the long sharded run; the shard a split created on one node only never got
a leader, since its other voters, which caught up their parent by a snapshot past the
split, dropped its vote requests)."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from kvstore.consensus import new_core
from kvstore.consensus.paxos import ballot
from kvstore.consensus.types import (
    Config,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
)
from kvstore.node.lifecycle import receive_unknown
from kvstore.node.shards import DriverReplicas
from kvstore.shard import commands as cmds
from kvstore.shard.descriptor import Descriptor, Epoch
from kvstore.storage import NodeStorage

PARENT, NEW = 1, 3


def _node(tmp_path: Path, kind: str) -> tuple[NodeStorage, Any, DriverReplicas]:
    st = NodeStorage(str(tmp_path / "n2"), map_size=16 << 20, sync=False)
    st.group(PARENT).bootstrap({1, 2, 3}, Descriptor(id=PARENT, voters=(1, 2, 3)))

    def make(g: int) -> Any:
        cfg = Config(id=2, group=g, election_tick=10, heartbeat_tick=1, rng=random.Random(1))
        return new_core(kind, cfg, st.group(g))

    driver = SimpleNamespace(config=SimpleNamespace(node_id=2), groups={}, storage=st)
    driver._make_group = make
    return st, driver, DriverReplicas(cast(Any, driver))


def _request(kind: str) -> Message:
    if kind == "raft":
        return Message(type=MessageType.VOTE, group=NEW, from_=3, to=2, term=9, index=1, log_term=6)
    return Message(
        type=MessageType.PREPARE, group=NEW, from_=3, to=2, term=ballot.make(9, 3), index=5
    )


def _vote(st: NodeStorage, core: Any, m: Message) -> HardState:
    """Step ``m``, persist the Ready (its hard state) and return the answer's grant."""
    core.step(m)
    rd = core.ready()
    with st.write() as w:
        w.save(NEW, hard_state=rd.hard_state, entries=rd.entries)
    core.advance(rd)
    [resp] = rd.messages
    assert resp.type in (MessageType.VOTE_RESP, MessageType.PROMISE) and not resp.reject, resp
    assert rd.hard_state is not None
    return rd.hard_state


def _split(st: NodeStorage, *, also: Any = None) -> None:
    """The lagging parent applies the split that creates NEW at index 1, term 6;
    ``also(w)`` runs in the same transaction after it."""
    e = Entry(
        term=6, index=1, type=EntryType.NORMAL, data=cmds.encode(cmds.Split(NEW, b"m", Epoch(1, 1)))
    )
    with st.write() as w:
        w.save(PARENT, entries=[e])
        w.apply(PARENT, [e])
        assert w.created == [NEW]
        if also is not None:
            also(w)


@pytest.mark.parametrize("kind", ["raft", "paxos"])
def test_a_vote_request_starts_a_replica_that_answers_it(tmp_path: Path, kind: str) -> None:
    st, driver, r = _node(tmp_path, kind)
    try:
        m = _request(kind)
        assert receive_unknown(r, m) and NEW in driver.groups
        hs = _vote(st, driver.groups[NEW], m)
        assert st.group(NEW).initial_state()[0] == hs
        # Where this node held the group before (a tombstone), a vote request creates
        # nothing: that replica may have acknowledged entries its empty log lacks.
        driver.groups.clear()
        with st.write() as w:
            w.drop_group(NEW)
        assert not receive_unknown(r, m) and NEW not in driver.groups
    finally:
        st.close()


@pytest.mark.parametrize("same_persist", [False, True])
def test_a_split_keeps_the_vote_of_a_replica_a_vote_request_started(
    tmp_path: Path, same_persist: bool
) -> None:
    st, driver, r = _node(tmp_path, "raft")
    try:
        m = _request("raft")
        r.start_empty(NEW)  # as receive_unknown does for ``m``
        core = driver.groups[NEW]
        if same_persist:
            # The vote's Ready lands in the persist that applies the split, after it.
            core.step(m)
            rd = core.ready()
            _split(st, also=lambda w: w.save(NEW, hard_state=rd.hard_state))
            core.advance(rd)
        else:
            _vote(st, core, m)
            _split(st)
        log = st.group(NEW)
        assert log.initial_state()[0] == HardState(term=9, vote=3, commit=1)
        assert (log.applied_index(), log.last_index(), log.view.shard is not None) == (1, 1, True)
    finally:
        st.close()
