"""A persist that destroys a merge source and also holds a Ready of that source (the
driver persists its groups in the order it made them, a split's right half last):
the source's Ready must change nothing but the group's tombstone. Its vote or promise
leaves the node after the persist (ReplicaLoop.finish sends every Ready's messages), so
the tombstone must hold it (storage/tombstone.py), and its entries must not land in the
destroyed group's state (a gap there stopped the node's driver, FINDINGS F8)."""

from __future__ import annotations

import pytest

from kvstore.consensus.types import ConfState, Entry, EntryType, HardState, Ready, Snapshot
from kvstore.node.metrics import NodeMetrics
from kvstore.node.persist import Plan, ShardChanges, persist_plans
from kvstore.shard import Descriptor
from kvstore.shard import commands as cmds
from kvstore.statemachine import Put, encode_batch
from kvstore.storage import NodeStorage

L, R = 1, 2
VOTERS = (1, 2, 3)


def entry(index: int, data: bytes, term: int = 1) -> Entry:
    return Entry(term=term, index=index, type=EntryType.NORMAL, data=data)


def run(st: NodeStorage, group: int, *ents: Entry) -> None:
    with st.write() as w:
        w.save(group, entries=list(ents))
        w.apply(group, list(ents))


def shards(st: NodeStorage) -> NodeStorage:
    st.group(L).bootstrap(set(VOTERS), Descriptor(id=L, end=b"m", voters=VOTERS))
    st.group(R).bootstrap(set(VOTERS), Descriptor(id=R, start=b"m", voters=VOTERS))
    run(st, R, entry(1, encode_batch([Put(b"pear", b"1", 5, 1, 1)])))
    src = st.group(R).view.shard
    tgt = st.group(L).view.shard
    assert src is not None and tgt is not None
    run(st, R, entry(2, cmds.encode(cmds.PrepareMerge(L, src.epoch, tgt.epoch))))
    return st


@pytest.mark.parametrize("appends", [True, False])
@pytest.mark.parametrize("how", ["commit", "snapshot"])
def test_the_sources_ready_after_its_destroy_keeps_its_vote_and_nothing_else(
    tmp_path: object, how: str, appends: bool
) -> None:
    st = shards(NodeStorage(f"{tmp_path}/n", map_size=16 << 20, sync=False))
    try:
        src = st.group(R).view.shard
        assert src is not None
        if how == "commit":
            commit = entry(1, cmds.encode(cmds.CommitMerge(src)))
            target = Ready(entries=(commit,), committed=(commit,))
        else:
            # A lagging target replica gets the merged shard's snapshot (another node's
            # storage built it): the install destroys the local frozen source.
            other = shards(NodeStorage(f"{tmp_path}/o", map_size=16 << 20, sync=False))
            try:
                run(other, L, entry(1, cmds.encode(cmds.CommitMerge(src))))
                snap = other.group(L).snapshot()
            finally:
                other.close()
            target = Ready(snapshot=Snapshot(metadata=snap.metadata, data=snap.data))
        # The frozen source's replica voted for node 3 in term 7 in the same batch (and,
        # with ``appends``, a noop of the new term came with it).
        late = [Entry(term=7, index=3, type=EntryType.NOOP)] if appends else []
        plans = [
            Plan(group=L, rd=target, compact_to=0),
            Plan(
                group=R,
                rd=Ready(
                    hard_state=HardState(term=7, vote=3, commit=3),
                    entries=tuple(late),
                    committed=tuple(late),
                ),
                compact_to=0,
                conf_state=ConfState(voters=frozenset(VOTERS)),
            ),
        ]
        changes = ShardChanges()
        persist_plans(st, NodeMetrics(), plans, changes)
        assert changes.merged == [(L, R)]
        assert R not in st.groups()
        # A replica of R created here again starts from the vote the node sent.
        assert st.group(R).initial_state()[0] == HardState(term=7, vote=3)
        st.close()
        st = NodeStorage(f"{tmp_path}/n", map_size=16 << 20, sync=False)
        assert R not in st.groups()
        assert st.group(R).initial_state()[0] == HardState(term=7, vote=3)
        assert [kv.key for kv in st.kv(L).scan()] == [b"pear"]
    finally:
        st.close()
