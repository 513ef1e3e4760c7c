"""Sharded storage: one user key space per node, ranges per group, split applied in the
group's log (no data copied), range snapshots, conf_ver per membership change, and the
migration of data written before sharding."""

from __future__ import annotations

import lmdb
import pytest

from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Ready,
    Snapshot,
)
from kvstore.node.metrics import NodeMetrics
from kvstore.node.persist import Plan, persist_plans
from kvstore.shard import Descriptor, Epoch
from kvstore.shard import commands as cmds
from kvstore.statemachine import ApplyError, Put, encode_batch
from kvstore.storage import NodeStorage
from kvstore.storage import keys as storage_keys
from kvstore.storage.snapshot import read_image

P, C = 1, 9


def entry(index: int, data: bytes, term: int = 1, type: EntryType = EntryType.NORMAL) -> Entry:
    return Entry(term=term, index=index, type=type, data=data)


def run(st: NodeStorage, group: int, *ents: Entry) -> list[object]:
    with st.write() as w:
        w.save(group, entries=list(ents))
        return list(w.apply(group, list(ents)))


@pytest.fixture
def st(tmp_path: object) -> NodeStorage:
    s = NodeStorage(str(tmp_path), map_size=16 << 20, sync=False)
    s.group(P).bootstrap({1, 2, 3}, Descriptor(id=P, voters=(1, 2, 3)))
    return s


def test_split_moves_no_data_and_creates_the_right_half(st: NodeStorage) -> None:
    run(
        st,
        P,
        entry(1, encode_batch([Put(b"apple", b"1", 5, 1), Put(b"pear", b"2", 5, 2)]), term=2),
    )
    split = cmds.encode(cmds.Split(C, b"m", Epoch(1, 1)))
    with st.write() as w:
        w.save(P, entries=[entry(2, split, term=2)])
        w.apply(P, [entry(2, split, term=2)])
        assert w.created == [C] and w.admin_results[P] == {2: C}
    left, right = st.group(P).view.shard, st.group(C).view.shard
    assert left == Descriptor(id=P, end=b"m", epoch=Epoch(2, 1), voters=(1, 2, 3))
    assert right == Descriptor(id=C, start=b"m", epoch=Epoch(2, 1), voters=(1, 2, 3))
    child = st.group(C)
    # The new group starts at the split entry: same index, same term, same members.
    assert (child.first_index(), child.last_index(), child.applied_index()) == (3, 2, 2)
    assert child.term(2) == 2 and child.initial_state() == (
        HardState(term=2, commit=2),
        ConfState(voters=frozenset({1, 2, 3})),
    )
    assert [kv.key for kv in st.kv(P).scan()] == [b"apple"]
    assert [kv.key for kv in st.kv(C).scan()] == [b"pear"]
    # A write for the right half that committed in the parent after the split applies
    # as nothing; the new group applies it, and a retry of a write that applied before
    # the split finds its answer in the copied session.
    [late] = run(st, P, entry(3, encode_batch([Put(b"plum", b"3", 5, 3)]), term=2))
    assert late.error == ApplyError.WRONG_SHARD  # type: ignore[attr-defined]
    ok, retry = run(
        st, C, entry(3, encode_batch([Put(b"plum", b"3", 5, 3), Put(b"pear", b"2", 5, 2)]), term=3)
    )
    assert ok.ok and ok.error == ApplyError.NONE  # type: ignore[attr-defined]
    assert retry.revision == 1  # type: ignore[attr-defined]  # the original answer
    assert st.kv(P).get(b"plum") is not None  # one key space: visible by key
    assert [kv.key for kv in st.kv(P).scan()] == [b"apple"]  # but not in P's range


def test_split_with_a_stale_epoch_or_bad_key_applies_nothing(st: NodeStorage) -> None:
    for i, c in enumerate(
        (cmds.Split(C, b"m", Epoch(7, 1)), cmds.Split(C, b"", Epoch(1, 1))), start=1
    ):
        with st.write() as w:
            data = cmds.encode(c)
            w.save(P, entries=[entry(i, data)])
            w.apply(P, [entry(i, data)])
            assert w.created == [] and w.admin_results[P] == {i: 0}
    assert st.group(P).view.shard == Descriptor(id=P, voters=(1, 2, 3))
    assert st.groups() == [P]


def test_split_keeps_a_new_replica_that_already_exists(st: NodeStorage) -> None:
    """The new shard's replica arrived by snapshot before the parent applied the split:
    the split must not overwrite it (TiKV's rule)."""
    newer = Descriptor(id=C, start=b"m", epoch=Epoch(5, 1), voters=(1, 2, 3))
    st.group(C).bootstrap({1, 2, 3}, newer)
    with st.write() as w:
        w.save(C, entries=[entry(1, b"", term=4)], hard_state=HardState(term=4))
    data = cmds.encode(cmds.Split(C, b"m", Epoch(1, 1)))
    with st.write() as w:
        w.save(P, entries=[entry(1, data)])
        w.apply(P, [entry(1, data)])
        assert w.created == []
    assert st.group(C).view.shard == newer and st.group(C).last_index() == 1


def test_range_snapshot_holds_the_range_and_the_descriptor(
    st: NodeStorage, tmp_path: object
) -> None:
    run(st, P, entry(1, encode_batch([Put(b"apple", b"1"), Put(b"pear", b"2")])))
    data = cmds.encode(cmds.Split(C, b"m", Epoch(1, 1)))
    run(st, P, entry(2, data))
    snap = st.group(C).snapshot()
    image = read_image(C, 2, snap.data)
    assert [k for k, _ in image.kv] == [b"pear"]
    other = NodeStorage(str(tmp_path) + "-other", map_size=16 << 20, sync=False)
    try:
        # The receiving node holds unrelated data in another range: it survives.
        other.group(3).bootstrap({1}, Descriptor(id=3, end=b"m", voters=(1,)))
        run(other, 3, entry(1, encode_batch([Put(b"apple", b"mine")])))
        with other.write() as w:
            w.save(C, snapshot=Snapshot(metadata=snap.metadata, data=snap.data))
        assert other.group(C).view.shard == st.group(C).view.shard
        assert [kv.key for kv in other.kv(C).scan()] == [b"pear"]
        assert other.kv(3).get(b"apple").value == b"mine"  # type: ignore[union-attr]
    finally:
        other.close()


def test_membership_changes_raise_conf_ver_entry_by_entry(st: NodeStorage) -> None:
    ccs = [
        ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=4),
        ConfChange(type=ConfChangeType.ADD_NODE, node_id=4),
        ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=1),
    ]
    ents = [entry(i, cc.encode(), type=EntryType.CONF_CHANGE) for i, cc in enumerate(ccs, 1)]
    run(st, P, *ents)
    d = st.group(P).view.shard
    assert d is not None and d.epoch == Epoch(1, 4)
    assert (d.voters, d.learners) == ((2, 3, 4), ())


def test_split_after_a_membership_change_in_the_same_persist(st: NodeStorage) -> None:
    """The new group's membership is the parent's at the split index, however the
    entries were batched: a conf change and a split applied in one persist gave the new
    group the membership from BEFORE the change (the driver records the new membership
    only after the apply), while a replica that applied them in two persists gave it the
    one after, so replicas of one group disagreed on its voters (found by the sharded
    simulation, tests/sim/FINDINGS.md F7)."""
    remove = ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=3)
    split = cmds.encode(cmds.Split(C, b"m", Epoch(1, 2)))
    ents = (entry(1, remove.encode(), type=EntryType.CONF_CHANGE), entry(2, split))
    after = ConfState(voters=frozenset({1, 2}))
    plan = Plan(group=P, rd=Ready(entries=ents, committed=ents), compact_to=0, conf_state=after)
    persist_plans(st, NodeMetrics(), [plan])
    child = st.group(C).view
    assert child.conf_state == after == child.base.conf_state
    assert child.shard is not None and (child.shard.voters, child.shard.learners) == ((1, 2), ())
    assert st.group(P).view.conf_state == after


def test_meta_group_applies_alloc_and_report(st: NodeStorage) -> None:
    from kvstore.shard.layout import initial_map

    m = cmds.initial_meta(initial_map([1, 2, 3], 2))
    st.group(0).bootstrap({1, 2, 3}, meta_state=m.encode())
    e1 = entry(1, cmds.encode(cmds.AllocIds(1)))
    with st.write() as w:
        w.save(0, entries=[e1])
        w.apply(0, [e1])
        assert w.admin_results[0] == {1: 3}
    snap = st.group(0).snapshot()
    state = cmds.MetaState.decode(read_image(0, 1, snap.data).meta_state)
    assert state.next_id == 4 and [d.id for d in state.shards] == [1, 2]


def test_data_written_before_sharding_is_migrated(tmp_path: object) -> None:
    path = str(tmp_path) + "/old"
    s = NodeStorage(path, map_size=16 << 20, sync=False)
    run(s, 1, entry(1, encode_batch([Put(b"k", b"v")])))
    # Rewrite the store into the old layout: group u64 | key, and no layout marker.
    with s.env.begin(write=True) as txn:
        rec = txn.get(storage_keys.kv_key(b"k"), db=s.dbs.kv)
        txn.delete(storage_keys.kv_key(b"k"), db=s.dbs.kv)
        txn.put((1).to_bytes(8, "big") + b"k", rec, db=s.dbs.kv)
        txn.delete(storage_keys.node_meta_key(storage_keys.LAYOUT), db=s.dbs.meta)
    s.close()
    with NodeStorage(path, map_size=16 << 20, sync=False) as again:
        assert again.kv(1).get(b"k").value == b"v"  # type: ignore[union-attr]
        assert [kv.key for kv in again.kv(1).scan()] == [b"k"]
    env = lmdb.open(path, max_dbs=8)
    try:
        with env.begin() as txn:
            kv = env.open_db(b"kv", txn=txn)
            assert list(txn.cursor(db=kv).iternext(values=False)) == [b"dk"]
    finally:
        env.close()


def test_bootstrap_at_an_initial_index_leaves_no_entries_below_it(tmp_path: object) -> None:
    """A sharded group starts its log at 5 (TiKV's trick): a replica added later finds no
    entry to start from and gets a snapshot, which carries the descriptor."""
    s = NodeStorage(str(tmp_path) + "/init", map_size=16 << 20, sync=False)
    try:
        d = Descriptor(id=P, end=b"m", voters=(1, 2))
        assert s.group(P).bootstrap({1, 2}, d, initial_index=5)
        log = s.group(P)
        assert (log.first_index(), log.last_index(), log.applied_index(), log.term(5)) == (
            6,
            5,
            5,
            5,
        )
        assert log.initial_state() == (
            HardState(term=5, commit=5),
            ConfState(voters=frozenset({1, 2})),
        )
        snap = log.snapshot()
        assert snap.metadata.index == 5
        assert read_image(P, 5, snap.data).shard  # the descriptor travels with it
        run(s, P, entry(6, encode_batch([Put(b"a", b"1")]), term=6))
        assert s.kv(P).get(b"a") is not None
    finally:
        s.close()
