"""NodeStorage end to end: transactions, reopen, isolation, compaction, snapshots, metadata."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kvstore.consensus.types import (
    CompactedError,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
)
from kvstore.shard import Descriptor
from kvstore.statemachine import ApplyError, ApplyResult, Cas, Delete, KeyValue, Put, encode_batch
from kvstore.statemachine.commands import Command
from kvstore.storage import NodeStorage

VOTERS = ConfState(voters=frozenset({1, 2, 3}))


def batch(index: int, *cmds: Command, term: int = 1) -> Entry:
    return Entry(term=term, index=index, data=encode_batch(list(cmds)))


def commit(st: NodeStorage, group: int, *ents: Entry) -> list[ApplyResult]:
    with st.write() as w:
        w.save(group, entries=ents)
        return w.apply(group, ents)


def test_save_apply_and_reopen(st: NodeStorage, store_path: str) -> None:
    assert st.group(1).bootstrap({1, 2, 3})
    ents = [Entry(term=1, index=1, type=EntryType.NOOP), batch(2, Put(b"k", b"v"))]
    with st.write() as w:
        w.save(1, hard_state=HardState(term=1, vote=1, commit=2), entries=ents)
        results = w.apply(1, ents)
    assert [r.index for r in results] == [2]
    assert st.kv(1).get(b"k") == KeyValue(b"k", b"v", 1, 2, 2)
    st.close()
    with NodeStorage(store_path) as again:
        log = again.group(1)
        assert log.initial_state() == (HardState(term=1, vote=1, commit=2), VOTERS)
        assert log.entries(1, 3) == ents
        assert again.kv(1).applied_index() == 2
        assert again.kv(1).get(b"k") == KeyValue(b"k", b"v", 1, 2, 2)


def test_new_group_looks_like_an_empty_memory_storage(st: NodeStorage) -> None:
    log = st.group(4)
    assert (log.first_index(), log.last_index(), log.term(0)) == (1, 0, 0)
    assert log.initial_state() == (HardState(), ConfState())
    assert log.entries(1, 1) == []
    with pytest.raises(UnavailableError):
        log.term(1)
    with pytest.raises(CompactedError):
        log.entries(0, 1)
    assert log.snapshot().metadata == SnapshotMetadata()


def test_bootstrap_only_on_a_brand_new_group(st: NodeStorage) -> None:
    log = st.group(1)
    assert log.bootstrap({1, 2, 3})
    assert not log.bootstrap({4}), "a second bootstrap must not change membership"
    assert log.initial_state()[1] == VOTERS
    assert log.snapshot().metadata == SnapshotMetadata(conf_state=VOTERS)
    other = st.group(2)
    with st.write() as w:
        w.save(2, hard_state=HardState(term=3))
    assert not other.bootstrap({1})


def test_a_joiner_records_the_membership_of_a_snapshot_at_index_0(
    st: NodeStorage, store_path: str
) -> None:
    # The join contract (consensus/types.py): a node started with --join has none; the
    # leader's snapshot at index 0 (no data) gives it the base membership, which must
    # survive a restart and be what this node's own snapshot carries.
    genesis = Snapshot(metadata=SnapshotMetadata(conf_state=VOTERS))
    with st.write() as w:
        w.save(1, hard_state=HardState(term=2), snapshot=genesis)
    assert st.group(1).snapshot().metadata == SnapshotMetadata(conf_state=VOTERS)
    with st.write() as w:  # a member ignores it: its membership is newer
        w.save(1, snapshot=Snapshot(metadata=SnapshotMetadata(conf_state=ConfState())))
    st.close()
    with NodeStorage(store_path) as again:
        assert again.group(1).initial_state() == (HardState(term=2), VOTERS)
        assert again.group(1).snapshot().metadata == SnapshotMetadata(conf_state=VOTERS)


def test_a_raising_block_aborts_everything(st: NodeStorage) -> None:
    commit(st, 1, batch(1, Put(b"a", b"1")))
    with pytest.raises(KeyError), st.write() as w:
        w.save(1, hard_state=HardState(term=5), entries=[batch(2, Put(b"a", b"2"))])
        w.apply(1, [batch(2, Put(b"a", b"2"))])
        w.set_meta(b"cluster_id", b"x")
        raise KeyError("boom")
    assert st.group(1).last_index() == 1
    assert st.group(1).initial_state()[0] == HardState()
    assert st.kv(1).get(b"a") == KeyValue(b"a", b"1", 1, 1, 1)
    assert st.get_meta(b"cluster_id") is None


def test_gaps_are_refused(st: NodeStorage) -> None:
    commit(st, 1, batch(1, Put(b"a", b"1")))
    with pytest.raises(ValueError, match="gap"), st.write() as w:
        w.save(1, entries=[batch(3)])
    with pytest.raises(ValueError, match="not contiguous"), st.write() as w:
        w.save(1, entries=[batch(2), batch(4)])
    with pytest.raises(ValueError, match="applying 3 after applied 1"), st.write() as w:
        w.apply(1, [batch(3)])
    assert st.group(1).last_index() == 1


def test_apply_skips_applied_entries_and_advances_on_every_kind(st: NodeStorage) -> None:
    first = batch(1, Put(b"a", b"1"))
    ents = [
        first,
        Entry(term=1, index=2, type=EntryType.NOOP),
        Entry(term=1, index=3, type=EntryType.CONF_CHANGE, data=b"\x00" * 9),
        Entry(term=1, index=4, data=b""),
        Entry(term=1, index=5, data=b"not a batch"),
        batch(6, Put(b"a", b"2"), Delete(b"a")),
    ]
    assert len(commit(st, 1, first)) == 1
    with st.write() as w:
        w.save(1, entries=ents)
        results = w.apply(1, ents)
        w.set_conf_state(1, ConfState(voters=frozenset({1, 2})))
    assert [(r.index, r.ok) for r in results] == [(6, True), (6, True)]
    assert st.kv(1).applied_index() == 6
    assert st.kv(1).get(b"a") is None
    assert st.undecodable == 1
    assert st.group(1).initial_state()[1] == ConfState(voters=frozenset({1, 2}))


def test_ready_rule_truncates_the_suffix(st: NodeStorage, store_path: str) -> None:
    with st.write() as w:
        w.save(1, entries=[batch(i) for i in range(1, 6)])
    with st.write() as w:
        w.save(1, entries=[batch(3, term=2)])
    log = st.group(1)
    assert (log.last_index(), log.term(3), log.term(2)) == (3, 2, 1)
    st.close()
    with NodeStorage(store_path) as again:
        assert again.group(1).last_index() == 3
        assert again.group(1).entries(1, 4) == [batch(1), batch(2), batch(3, term=2)]


def test_groups_are_isolated(st: NodeStorage) -> None:
    """Logs and sessions are per group; user data is one key space and each group sees
    and writes only the range its shard descriptor owns (the meta group 0 owns none)."""
    top = 2**63 - 1
    ranges = {1: (b"", b"g"), 2: (b"g", b"t"), top: (b"t", b"")}
    for g, (lo, hi) in ranges.items():
        st.group(g).bootstrap({1}, Descriptor(id=g, start=lo, end=hi, voters=(1,)))
    st.group(0).bootstrap({1})
    written = {1: b"apple", 2: b"kiwi", top: b"zest"}
    for g in (0, 1, 2, top):
        res = commit(st, g, batch(1, Put(written.get(g, b"a"), str(g).encode()), Put(b"h", b"x")))
        assert next(r.error for r in res) == (ApplyError.WRONG_SHARD if g == 0 else ApplyError.NONE)
        assert res[1].error == (ApplyError.NONE if g == 2 else ApplyError.WRONG_SHARD)
    assert [kv.key for kv in st.kv(1).scan()] == [b"apple"]
    assert [kv.key for kv in st.kv(2).scan()] == [b"h", b"kiwi"]
    assert [kv.key for kv in st.kv(2).scan(b"a", b"i")] == [b"h"]
    assert [kv.key for kv in st.kv(top).scan()] == [b"zest"]
    assert st.kv(0).scan() == []
    with st.write() as w:
        w.save(1, entries=[batch(2, Delete(b"apple"))])
        w.apply(1, [batch(2, Delete(b"apple"))])
        w.compact(1, 2)
    assert st.kv(2).get(b"kiwi") is not None and st.group(2).entries(1, 2) == [
        batch(1, Put(b"kiwi", b"2"), Put(b"h", b"x"))
    ]
    assert st.groups() == [0, 1, 2, top]
    with pytest.raises(ValueError, match="group id"):
        st.group(2**63)


def test_scan_ranges(st: NodeStorage) -> None:
    commit(st, 1, batch(1, *(Put(k, b"v") for k in (b"", b"a", b"ab", b"b", b"\xff\xff"))))
    reader = st.kv(1)

    def keys(start: bytes, end: bytes = b"", limit: int = 0) -> list[bytes]:
        return [kv.key for kv in reader.scan(start, end, limit)]

    assert keys(b"") == [b"", b"a", b"ab", b"b", b"\xff\xff"]
    assert keys(b"a", b"b") == [b"a", b"ab"]
    assert keys(b"a", b"b", 1) == [b"a"]
    assert keys(b"b", b"a") == []
    assert keys(b"\xff") == [b"\xff\xff"]
    kvs, applied = reader.scan_with_applied(b"a", b"ab")
    assert ([kv.key for kv in kvs], applied) == ([b"a"], 1)
    assert reader.get_with_applied(b"zz") == (None, 1)


def test_scan_pages_stop_at_a_row_or_byte_limit_and_say_more(st: NodeStorage) -> None:
    commit(st, 1, batch(1, *(Put(k, b"v" * 100) for k in (b"a", b"b", b"c", b"d"))))
    reader = st.kv(1)

    def page(limit: int, max_bytes: int, end: bytes = b"") -> tuple[list[bytes], bool]:
        kvs, more, applied = reader.scan_page_with_applied(b"a", end, limit, max_bytes)
        assert applied == 1
        return [kv.key for kv in kvs], more

    assert page(0, 0) == ([b"a", b"b", b"c", b"d"], False)
    assert page(4, 0) == ([b"a", b"b", b"c", b"d"], False)
    assert page(2, 0) == ([b"a", b"b"], True)
    # Each row holds 1 + 100 bytes and a 24-byte header: stop once 300 bytes are in.
    assert page(0, 300) == ([b"a", b"b", b"c"], True)
    assert page(0, 1) == ([b"a"], True)  # at least one row
    assert page(0, 300, end=b"c") == ([b"a", b"b"], False)


def test_the_log_tail_in_memory_is_capped_in_bytes(tmp_path: Path) -> None:
    """512 cached entries of 1-4 MiB writes held 0.5-2 GiB: the tail stops at TAIL_BYTES,
    and the entries past it are read from LMDB."""
    from kvstore.storage.log import TAIL_BYTES

    store_path = str(tmp_path / "big")
    st = NodeStorage(store_path, map_size=1 << 30, sync=False)
    big = b"v" * (1 << 20)
    n = TAIL_BYTES // len(big) + 16
    for i in range(1, n + 1):
        with st.write() as w:
            w.save(1, entries=[Entry(term=1, index=i, data=big)])

    def cached(s: NodeStorage) -> tuple[int, int]:
        tail = s.group(1).view.tail
        return len(tail), sum(e.size() for e in tail)

    count, size = cached(st)
    assert 0 < count < n and size <= TAIL_BYTES
    assert st.group(1).view.tail[-1].index == n
    log = st.group(1)
    assert [e.index for e in log.entries(1, n + 1)] == list(range(1, n + 1))
    assert log.entries(1, 2)[0].data == big and log.term(1) == 1
    st.close()
    reopened = NodeStorage(store_path)
    try:
        count, size = cached(reopened)
        assert 0 < count < n and size <= TAIL_BYTES
    finally:
        reopened.close()


def test_compaction(st: NodeStorage, store_path: str) -> None:
    ents = [batch(i, Put(b"k", str(i).encode()), term=i) for i in range(1, 8)]
    commit(st, 1, *ents[:5])
    with st.write() as w:
        w.save(1, entries=ents[5:])
    with pytest.raises(ValueError, match="cannot compact to 6"), st.write() as w:
        w.compact(1, 6)
    with st.write() as w:
        w.compact(1, 4)
        w.compact(1, 2)  # below the base: nothing to do
    log = st.group(1)
    assert (log.first_index(), log.last_index(), log.term(4)) == (5, 7, 4)
    with pytest.raises(CompactedError):
        log.entries(4, 6)
    with pytest.raises(CompactedError):
        log.term(3)
    st.close()
    with NodeStorage(store_path, cache_entries=0) as again:
        log = again.group(1)
        assert (log.first_index(), log.term(4)) == (5, 4)
        assert log.entries(5, 8) == ents[4:]
        assert log.entries(5, 8, max_size=0) == ents[4:5]


def test_snapshot_is_the_applied_image_and_restores_elsewhere(
    st: NodeStorage, tmp_path: object
) -> None:
    st.group(1).bootstrap({1, 2, 3})
    first = commit(
        st,
        1,
        batch(1, Put(b"a", b"1", client_id=7, seq=1, incarnation=3), Put(b"b", b"2")),
        batch(2, Delete(b"b")),
    )
    with st.write() as w:
        w.save(1, entries=[batch(3, Put(b"c", b"3"), term=2)])  # stored, not applied
    snap = st.group(1).snapshot()
    assert snap.metadata == SnapshotMetadata(index=2, term=1, conf_state=VOTERS)
    assert st.group(1).snapshot() is snap, "cached while applied and membership stand"

    with NodeStorage(f"{tmp_path}/b") as b:
        commit(b, 1, batch(1, Put(b"zzz", b"old")))
        with b.write() as w:
            w.save(1, snapshot=snap, entries=[batch(3, Put(b"c", b"3"), term=2)])
        log = b.group(1)
        assert (log.first_index(), log.last_index(), log.term(2)) == (3, 3, 1)
        assert log.initial_state()[1] == VOTERS
        assert b.kv(1).scan() == st.kv(1).scan() == [KeyValue(b"a", b"1", 1, 1, 1)]
        assert b.kv(1).applied_index() == 2
        with b.write() as w:
            retried = w.apply(
                1, [batch(3, Put(b"a", b"1", client_id=7, seq=1, incarnation=3), term=2)]
            )
        assert retried == [ApplyResult(3, first[0].revision, True, None, None)], (
            "sessions travel with the snapshot"
        )
        with b.write() as w:
            w.save(1, snapshot=snap)  # not newer than applied: ignored
        assert b.kv(1).applied_index() == 3
        assert b.group(1).snapshot().metadata.index == 3


def test_snapshot_cache_follows_membership(st: NodeStorage) -> None:
    commit(st, 1, batch(1))
    s1 = st.group(1).snapshot()
    with st.write() as w:
        w.set_conf_state(1, ConfState(voters=frozenset({9})))
    assert st.group(1).snapshot().metadata.conf_state.voters == {9}
    assert st.group(1).snapshot() is not s1


def test_bad_snapshot_image_aborts_the_write(st: NodeStorage) -> None:
    from kvstore.storage import CorruptionError

    commit(st, 1, batch(1, Put(b"a", b"1")))
    bad = Snapshot(metadata=SnapshotMetadata(index=5, term=1), data=b"\x00" * 40)
    with pytest.raises(CorruptionError, match="group 1 index 5"), st.write() as w:
        w.save(1, snapshot=bad)
    assert st.kv(1).get(b"a") is not None and st.group(1).last_index() == 1


def test_node_meta(st: NodeStorage, store_path: str) -> None:
    assert st.get_meta(b"cluster_id") is None
    with st.write() as w:
        w.set_meta(b"cluster_id", b"c1")
        w.set_meta(b"node_id", b"3")
    st.close()
    with NodeStorage(store_path) as again:
        assert (again.get_meta(b"cluster_id"), again.get_meta(b"node_id")) == (b"c1", b"3")
        assert again.groups() == []


def test_unsynced_storage_flushes_on_close(store_path: str) -> None:
    with NodeStorage(store_path, sync=False) as st:
        commit(st, 1, batch(1, Put(b"a", b"1")))
        st.sync()
        commit(st, 1, batch(2, Put(b"a", b"2")))
    with NodeStorage(store_path) as again:
        assert again.kv(1).get(b"a") == KeyValue(b"a", b"2", 2, 1, 2)


def test_reads_while_a_writer_thread_commits(st: NodeStorage) -> None:
    log = st.group(1)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(1, 201):
                commit(st, 1, batch(i, Put(b"k", str(i).encode()), term=1 + i // 50))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    while t.is_alive() or log.last_index() < 200:
        last = log.last_index()
        if last:
            assert log.term(last) == 1 + last // 50
            assert len(log.entries(max(1, last - 5), last + 1)) == min(last, 6)
            kv, applied = st.kv(1).get_with_applied(b"k")
            assert kv is not None and kv.mod_revision == applied
    t.join()
    assert not errors


def test_usage_reports_the_map(st: NodeStorage) -> None:
    used, size = st.usage()
    assert 0 < used <= size == 64 << 20


def test_cas_through_lmdb(st: NodeStorage) -> None:
    [r1, r2] = commit(
        st, 1, batch(1, Cas(b"a", b"1", expected_version=0), Cas(b"a", b"2", expected_value=b"1"))
    )
    assert r1.ok and r2.ok and r2.kv == KeyValue(b"a", b"2", 2, 1, 1)


def test_drop_group_forgets_one_group_only(st: NodeStorage, store_path: str) -> None:
    for g, (lo, hi) in ((3, (b"", b"m")), (4, (b"m", b""))):
        st.group(g).bootstrap({1}, Descriptor(id=g, start=lo, end=hi, voters=(1,)))
        key = b"k" if g == 3 else b"s"
        commit(st, g, batch(1, Put(key, b"v", client_id=1, seq=1, incarnation=1)))
        with st.write() as w:
            w.save(g, hard_state=HardState(term=2, vote=1, commit=1))
            w.compact(g, 1)
    with st.write() as w:
        w.drop_group(3)
    log = st.group(3)
    assert (log.first_index(), log.last_index(), log.applied_index()) == (1, 0, 0)
    # All but the promises (term, vote), which its tombstone keeps (tombstone.py).
    assert log.initial_state() == (HardState(term=2, vote=1), ConfState())
    assert st.kv(3).get(b"k") is None and st.kv(4).get(b"s") is not None
    assert st.groups() == [4]
    st.close()
    with NodeStorage(store_path) as again:
        assert again.groups() == [4]
        assert again.group(3).initial_state() == (HardState(term=2, vote=1), ConfState())
        assert again.group(3).bootstrap({1, 2})
        assert again.group(4).first_index() == 2


def test_writers_in_two_threads_keep_views_and_disk_in_step(
    st: NodeStorage, store_path: str
) -> None:
    def append(group: int) -> None:
        for _ in range(100):
            with st.write() as w:
                log = st.group(group)
                w.save(group, entries=[batch(log.last_index() + 1, Put(b"k", b"v"))])
                w.save(3, entries=[batch(st.group(3).last_index() + 1)])

    threads = [threading.Thread(target=append, args=(g,)) for g in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [st.group(g).last_index() for g in (1, 2, 3)] == [100, 100, 200]
    st.close()
    with NodeStorage(store_path) as again:
        assert [again.group(g).last_index() for g in (1, 2, 3)] == [100, 100, 200]


def test_one_data_directory_one_node_storage(st: NodeStorage, store_path: str) -> None:
    from kvstore.storage import StorageError

    with pytest.raises(StorageError, match="in use by another NodeStorage"):
        NodeStorage(store_path)
    st.close()
    with NodeStorage(store_path) as again:
        assert again.group(1).last_index() == 0


def test_longest_key_fits_lmdb_and_longer_is_refused(st: NodeStorage) -> None:
    from kvstore.statemachine import MAX_KEY_SIZE, ApplyError

    longest, too_long = b"k" * MAX_KEY_SIZE, b"k" * (MAX_KEY_SIZE + 1)
    ok, refused = commit(st, 1, batch(1, Put(longest, b"v"), Put(too_long, b"v")))
    assert ok.ok and st.kv(1).get(longest) is not None
    assert refused.error == ApplyError.KEY_TOO_LARGE and st.kv(1).get(too_long) is None
    assert [kv.key for kv in st.kv(1).scan()] == [longest]


def test_streamed_snapshots_leave_the_image_to_the_node(st: NodeStorage, tmp_path: object) -> None:
    """A node's cores get metadata only (no pass over the data on the event loop); the
    image comes from write_image_to, in one read transaction, and installs elsewhere."""
    import io

    st.group(1).bootstrap({1, 2, 3})
    commit(st, 1, batch(1, Put(b"a", b"1")), batch(2, Put(b"b", b"2")))
    st.stream_snapshots = True
    log = st.group(1)
    snap = log.snapshot()
    assert snap.data == b""
    assert snap.metadata == SnapshotMetadata(index=2, term=1, conf_state=VOTERS)
    buf = io.BytesIO()
    meta, size, _ = log.write_image_to(buf)
    assert meta == snap.metadata and size == len(buf.getvalue())
    log.streamed = meta
    commit(st, 1, batch(3, Put(b"c", b"3")))
    assert log.snapshot().metadata == meta, "the built image is named while usable"
    with st.write() as w:
        w.compact(1, 3)
    assert log.snapshot().metadata.index == 3, "the log no longer continues from it"
    with NodeStorage(f"{tmp_path}/b") as b:
        with b.write() as w:
            w.save(1, snapshot=Snapshot(metadata=meta, data=buf.getvalue()))
        assert b.kv(1).get(b"b") is not None and b.kv(1).get(b"c") is None
        assert b.kv(1).applied_index() == 2


def test_tight_above_the_high_water_mark_and_not_after_deletes(store_path: str) -> None:
    """``tight`` follows the live pages: set once the data passes the mark, cleared once
    deletes free pages (the file keeps its size, so the cheap bound no longer decides)."""
    st = NodeStorage(store_path, map_size=32 << 20)
    try:
        assert st.group(1).bootstrap({1, 2, 3})
        assert not st.tight
        assert st.live >= st.live_bytes()  # below the mark: an upper bound
        value = b"v" * 4000
        index = 0
        while not st.tight:
            puts = [Put(b"k%06d" % (index * 500 + i), value) for i in range(500)]
            index += 1
            commit(st, 1, batch(index, *puts))
            assert index < 20, "never tight"
        assert st.live == st.live_bytes() > st.high_water
        dels = [Delete(b"k%06d" % k) for k in range(index * 500)]
        index += 1
        commit(st, 1, batch(index, *dels))
        with st.write() as w:
            w.compact(1, index)
        assert not st.tight
        assert st.live == st.live_bytes() < st.high_water
    finally:
        st.close()
