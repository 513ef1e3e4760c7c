"""A replica destroyed on a node and created there again keeps its first incarnation's
promises (FINDINGS F12: "group 3: node 2 voted for 2 and then 4 in term 12", raft seed
30402 of the long sharded run), also when a leader that has not applied the node's
removal re-creates it from an older membership (N3). storage/tombstone.py has the rule."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kvstore.consensus import new_core
from kvstore.consensus.paxos import ballot
from kvstore.consensus.types import (
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from kvstore.node.lifecycle import answer_stale_leader, may_vote, receive_unknown
from kvstore.shard import commands as cmds
from kvstore.shard import descriptor as desc
from kvstore.shard.descriptor import Descriptor, Epoch
from kvstore.storage import NodeStorage
from kvstore.storage.snapshot import write_image

from .replica_stub import replicas

G, PARENT = 3, 1
SHARD = Descriptor(id=G, start=b"m", epoch=Epoch(2, 4), voters=(1, 2, 3))


def _destroyed(path: Path, hs: HardState) -> NodeStorage:
    """Node 2's storage after its replica of G, holding ``hs``, was destroyed."""
    st = NodeStorage(str(path), map_size=16 << 20, sync=False)
    st.group(G).bootstrap({1, 2, 3}, SHARD, initial_index=5)
    with st.write() as w:
        w.save(G, hard_state=hs)
    with st.write() as w:
        w.drop_group(G)
    return st


def _core(kind: str, st: NodeStorage) -> Any:
    cfg = Config(id=2, group=G, election_tick=10, heartbeat_tick=1, rng=random.Random(1))
    return new_core(kind, cfg, st.group(G))


def _answers(core: Any, m: Message) -> list[Message]:
    core.step(m)
    return list(core.ready().messages) if core.has_ready() else []


def test_a_recreated_raft_replica_does_not_vote_again_in_a_term(tmp_path: Path) -> None:
    st = _destroyed(tmp_path / "n2", HardState(term=12, vote=2, commit=5))
    try:
        for reopen in (False, True):
            if reopen:  # the tombstone is durable: a restart keeps it
                st.close()
                st = NodeStorage(str(tmp_path / "n2"), map_size=16 << 20, sync=False)
            vote = Message(
                type=MessageType.VOTE, group=G, from_=4, to=2, term=12, index=30, log_term=11
            )
            [resp] = _answers(_core("raft", st), vote)
            assert resp.type == MessageType.VOTE_RESP and resp.reject, resp
            assert st.group(G).initial_state()[0] == HardState(term=12, vote=2)
            assert st.groups() == []  # a tombstone hosts nothing
    finally:
        st.close()


def test_a_recreated_paxos_acceptor_does_not_promise_below_its_ballot(tmp_path: Path) -> None:
    promised = ballot.make(7, 2)
    st = _destroyed(tmp_path / "n2", HardState(term=promised, commit=5))
    try:
        prepare = Message(
            type=MessageType.PREPARE, group=G, from_=4, to=2, term=ballot.make(5, 4), index=1
        )
        [resp] = _answers(_core("paxos", st), prepare)
        assert resp.type == MessageType.PROMISE and resp.reject, resp
        assert st.group(G).initial_state()[0].term == promised
    finally:
        st.close()


def test_a_snapshot_install_and_a_later_destroy_keep_the_highest_promise(tmp_path: Path) -> None:
    st = _destroyed(tmp_path / "n2", HardState(term=12, vote=2, commit=5))
    try:
        image = write_image(9, [], [], shard=desc.encode(SHARD))
        snap = Snapshot(metadata=SnapshotMetadata(index=9, term=12), data=image)
        with st.write() as w:
            w.save(G, snapshot=snap)
        assert st.group(G).initial_state()[0] == HardState(term=12, vote=2)
        with st.write() as w:
            w.save(G, hard_state=HardState(term=14, vote=1, commit=9))
        with st.write() as w:
            w.drop_group(G)
        assert st.group(G).initial_state()[0] == HardState(term=14, vote=1)
    finally:
        st.close()


@pytest.mark.parametrize("split_term", [9, 12, 13])
def test_a_lagging_parent_creates_the_destroyed_group_with_its_promises(
    tmp_path: Path, split_term: int
) -> None:
    """The parent's split creates G here again after G's replica was destroyed (this
    parent lagged): the new replica keeps the votes of the destroyed one."""
    st = _destroyed(tmp_path / "n2", HardState(term=12, vote=2, commit=5))
    try:
        st.group(PARENT).bootstrap({1, 2, 3}, Descriptor(id=PARENT, voters=(1, 2, 3)))
        data = cmds.encode(cmds.Split(G, b"m", Epoch(1, 1)))
        e = Entry(term=split_term, index=1, type=EntryType.NORMAL, data=data)
        with st.write() as w:
            w.save(PARENT, entries=[e])
            w.apply(PARENT, [e])
            assert w.created == [G]
        hs = st.group(G).initial_state()[0]
        want = HardState(term=12, vote=2, commit=1) if split_term <= 12 else None
        assert hs == (want or HardState(term=split_term, commit=1))
    finally:
        st.close()


def test_a_replica_a_snapshot_creates_again_keeps_the_promises(tmp_path: Path) -> None:
    """The node's own path (lifecycle.receive_unknown -> an empty replica -> the core
    installs the snapshot): the new replica, also one a lagging leader re-creates from an
    older membership (N3), starts in the tombstone's term with its vote."""
    st = _destroyed(tmp_path / "n2", HardState(term=12, vote=2, commit=5))
    try:
        driver, r = replicas(st, "raft", lambda g: _core("raft", st))
        old = Descriptor(id=G, start=b"m", epoch=Epoch(2, 3), voters=(1, 2, 3))
        image = write_image(20, [], [], shard=desc.encode(old))
        meta = SnapshotMetadata(
            index=20, term=11, conf_state=ConfState(voters=frozenset({1, 2, 3}))
        )
        m = Message(
            type=MessageType.SNAPSHOT,
            group=G,
            from_=1,
            to=2,
            term=12,
            snapshot=Snapshot(metadata=meta, data=image),
        )
        assert receive_unknown(r, m)
        core = driver.groups[G]
        core.step(m)
        rd = core.ready()
        with st.write() as w:
            w.save(G, hard_state=rd.hard_state, entries=rd.entries, snapshot=rd.snapshot)
        core.advance(rd)
        assert st.group(G).view.shard == old
        assert st.group(G).view.hard_state == HardState(term=12, vote=2, commit=20)
        vote = Message(
            type=MessageType.VOTE, group=G, from_=4, to=2, term=12, index=30, log_term=11
        )
        [resp] = _answers(core, vote)
        assert resp.type == MessageType.VOTE_RESP and resp.reject, resp
    finally:
        st.close()


def test_an_unfilled_replica_of_a_destroyed_group_answers_no_vote(tmp_path: Path) -> None:
    """A snapshot from a leader in a term below the tombstone's starts an empty replica
    whose core drops the snapshot (stale term): with an empty log it would grant any
    candidate, also a stale one lacking entries the destroyed replica acknowledged, so
    the node keeps vote requests from it until a snapshot fills it. A group this node
    never held, and a filled replica, take them."""
    st = _destroyed(tmp_path / "n2", HardState(term=12, vote=2, commit=5))
    try:
        sent: list[Message] = []
        driver, r = replicas(st, "raft", lambda g: _core("raft", st), send=sent.extend)
        image = write_image(20, [], [], shard=desc.encode(SHARD))
        meta = SnapshotMetadata(index=20, term=11, conf_state=ConfState(voters=frozenset({1, 3})))
        m = Message(
            type=MessageType.SNAPSHOT,
            group=G,
            from_=1,
            to=2,
            term=11,
            snapshot=Snapshot(metadata=meta, data=image),
        )
        assert receive_unknown(r, m)
        core = driver.groups[G]
        core.step(m)
        assert not core.has_ready() and st.group(G).view.shard is None  # dropped: stale
        # The node tells that leader the tombstone's term (without CheckQuorum and PreVote
        # the core would not, and a replica with no membership never campaigns), so it
        # steps down and a leader in a later term fills the replica.
        answer_stale_leader(r, m)
        assert [(a.type, a.to, a.term) for a in sent] == [(MessageType.APPEND_RESP, 1, 12)]
        answer_stale_leader(r, replace(m, term=12))
        assert len(sent) == 1
        # The destroyed replica's log ended at (term 5, index 5): a candidate whose log
        # ends at (4, 9) lacks that entry.
        vote = Message(type=MessageType.VOTE, group=G, from_=4, to=2, term=13, index=9, log_term=4)
        assert not may_vote(r, vote)
        # One whose log reaches it by Raft's order holds it: the destroyed replica would
        # have granted it (tombstone.covers).
        assert may_vote(r, replace(vote, log_term=5))
        assert may_vote(r, replace(vote, type=MessageType.APPEND))
        assert may_vote(r, replace(vote, group=G + 1))  # never held here
        # What the gate keeps from the core: it would grant the stale candidate.
        [resp] = _answers(core, vote)
        assert resp.type == MessageType.VOTE_RESP and not resp.reject
        # Filled by a snapshot, the replica votes again (by its log).
        with st.write() as w:
            w.save(G, snapshot=replace(m.snapshot, metadata=replace(meta, term=13)))
        assert may_vote(r, vote)
    finally:
        st.close()
