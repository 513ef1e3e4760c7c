"""A replica destroyed on a node and created there again from an image older than the
log the destroyed one stored answers no vote request until its log reaches that log's
last entry (storage/tombstone.py covers, node/lifecycle.py may_vote). The destroyed
replica acknowledged those entries, and a quorum counting it may have committed them:
granting a candidate that lacks them would let it overwrite committed entries (amnesia,
as a wiped disk)."""

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
from kvstore.node.lifecycle import may_vote, receive_unknown
from kvstore.node.shards import DriverReplicas
from kvstore.shard import descriptor as desc
from kvstore.shard.descriptor import Descriptor, Epoch
from kvstore.storage import NodeStorage
from kvstore.storage.snapshot import write_image

from .replica_stub import replicas

G = 3
SHARD = Descriptor(id=G, start=b"m", epoch=Epoch(2, 4), voters=(1, 2, 3))


def _noops(lo: int, hi: int, term: int) -> list[Entry]:
    return [Entry(term=term, index=i, type=EntryType.NOOP) for i in range(lo, hi + 1)]


@pytest.mark.parametrize("kind", ["raft", "paxos"])
def test_a_replica_recreated_from_an_older_image_votes_only_once_its_log_is_back(
    tmp_path: Path, kind: str
) -> None:
    def term(n: int, node: int) -> int:  # Multi-Paxos: a ballot of round n
        return n if kind == "raft" else ballot.make(n, node)

    t12 = term(12, 1)
    st = NodeStorage(str(tmp_path / "n2"), map_size=16 << 20, sync=False)
    try:
        # Node 2's first replica of G stored (and acknowledged) entries 6..30 of term 12;
        # then it was moved away (destroyed).
        st.group(G).bootstrap({1, 2, 3}, SHARD, initial_index=5)
        with st.write() as w:
            w.save(G, hard_state=HardState(term=t12, vote=1, commit=20), entries=_noops(6, 30, t12))
        with st.write() as w:
            w.drop_group(G)
        # The leader of term 12 (it has not applied the removal, or reuses an image built
        # before it) creates it again from an image at 20.
        cfg = Config(id=2, group=G, election_tick=10, heartbeat_tick=1, rng=random.Random(1))
        driver, r = replicas(st, kind, lambda g: new_core(kind, cfg, st.group(G)))
        image = write_image(20, [], [], shard=desc.encode(SHARD))
        meta = SnapshotMetadata(
            index=20, term=12, conf_state=ConfState(voters=frozenset({1, 2, 3}))
        )
        m = Message(
            type=MessageType.SNAPSHOT,
            group=G,
            from_=1,
            to=2,
            term=t12,
            snapshot=Snapshot(metadata=meta, data=image),
        )
        assert receive_unknown(r, m)
        with st.write() as w:
            w.save(G, snapshot=m.snapshot)
        assert st.group(G).view.shard == SHARD and st.group(G).last_index() == 20
        # A lagging candidate of term 13 whose log ends at 25 (term 12): the first
        # replica, holding 30, would have refused it; this one must not answer.
        kind_of = MessageType.VOTE if kind == "raft" else MessageType.PREPARE
        vote = Message(
            type=kind_of, group=G, from_=3, to=2, term=term(13, 3), index=25, log_term=t12
        )
        assert not may_vote(r, vote)
        # What the gate keeps from the core: it would grant (promise) by its short log.
        core = driver.groups[G]
        core.step(m)
        for _ in range(3 * cfg.election_tick):  # the leader is gone: no lease holds it
            core.tick()
            if core.has_ready():
                core.advance(core.ready())
        core.step(replace(vote, term=term(113, 3)))
        [resp] = [x for x in core.ready().messages if x.to == 3]
        assert resp.type in (MessageType.VOTE_RESP, MessageType.PROMISE) and not resp.reject
        # Once the leader's entries bring its log back to 30, it votes by its log again.
        with st.write() as w:
            w.save(G, entries=_noops(21, 30, t12))
        assert may_vote(r, vote)
        st.close()
        st = NodeStorage(str(tmp_path / "n2"), map_size=16 << 20, sync=False)
        driver.storage = st
        assert may_vote(r, vote)  # durable: the stored-through index outlives a restart
        with st.write() as w:
            w.save(G, entries=_noops(31, 31, term(13, 1)))
            w.drop_group(G)  # destroyed again: the higher index is kept
        assert st.tombstone_log(G) == (term(13, 1), 31)
    finally:
        st.close()


def _recreated(tmp_path: Path, kind: str) -> tuple[NodeStorage, DriverReplicas, Any]:
    """Node 2's first replica of G stored entries 6..30 of term 12, of which only 6..20
    were committed (21..30: a partitioned leader's tail, which the group then truncated);
    it was destroyed, and G's log went on in term 13 with only two more entries."""
    st = NodeStorage(str(tmp_path / "n2"), map_size=16 << 20, sync=False)
    st.group(G).bootstrap({1, 2, 3}, SHARD, initial_index=5)
    with st.write() as w:
        w.save(G, hard_state=HardState(term=12, vote=2, commit=20), entries=_noops(6, 30, 12))
    with st.write() as w:
        w.drop_group(G)
    assert st.tombstone_log(G) == (12, 30)
    cfg = Config(id=2, group=G, election_tick=10, heartbeat_tick=1, rng=random.Random(1))
    driver, r = replicas(st, kind, lambda g: new_core(kind, cfg, st.group(G)))
    return st, r, driver


def _vote(log_term: int, index: int) -> Message:
    return Message(
        type=MessageType.VOTE, group=G, from_=3, to=2, term=14, index=index, log_term=log_term
    )


def test_raft_a_recreated_replica_votes_once_its_log_is_of_a_later_term(tmp_path: Path) -> None:
    """Raft orders logs by (last term, index): a log of a later term than the destroyed
    replica's last entry holds everything it acknowledged, however short. By index alone
    the replica waited for the group's log to pass 30, and with two such replicas of
    three no candidate could ever be elected to write it (the group wedged)."""
    st, r, _ = _recreated(tmp_path, "raft")
    try:
        # Empty (no snapshot yet): a candidate whose log reaches (12, 30) by Raft's order
        # is taken; one that does not is not.
        m = Message(type=MessageType.SNAPSHOT, group=G, from_=1, to=2, term=13)
        image = write_image(22, [], [], shard=desc.encode(SHARD))
        meta = SnapshotMetadata(
            index=22, term=13, conf_state=ConfState(voters=frozenset({1, 2, 3}))
        )
        m = replace(m, snapshot=Snapshot(metadata=meta, data=image))
        assert receive_unknown(r, m)
        assert may_vote(r, _vote(13, 21))
        assert may_vote(r, replace(_vote(13, 21), type=MessageType.PRE_VOTE))
        assert not may_vote(r, _vote(12, 29))
        # Filled from the term-13 leader's image at 22: its log reaches (12, 30).
        with st.write() as w:
            w.save(G, snapshot=m.snapshot)
        assert r.holds_destroyed_log(G)
        assert may_vote(r, _vote(13, 22))
        # Destroyed again at (13, 22): the later of the two logs is kept.
        with st.write() as w:
            w.drop_group(G)
        assert st.tombstone_log(G) == (13, 22)
    finally:
        st.close()


def test_paxos_a_recreated_acceptor_still_waits_for_the_index(tmp_path: Path) -> None:
    """Multi-Paxos has no order of logs: a promise reports accepted values from the
    candidate's index, so the acceptor waits until its log reaches the index."""
    st, r, _ = _recreated(tmp_path, "paxos")
    try:
        image = write_image(22, [], [], shard=desc.encode(SHARD))
        meta = SnapshotMetadata(
            index=22, term=13, conf_state=ConfState(voters=frozenset({1, 2, 3}))
        )
        with st.write() as w:
            w.save(G, snapshot=Snapshot(metadata=meta, data=image))
        assert not r.holds_destroyed_log(G)
        assert not may_vote(r, replace(_vote(13, 25), type=MessageType.PREPARE))
    finally:
        st.close()
