"""History and compaction: events per applied write, gets at past revisions against a
model, the retention window, Compact through the log, restarts, snapshots, splits and
merges (kvstore/storage/history.py)."""

from __future__ import annotations

import random

import pytest

from kvstore.consensus.types import Entry, EntryType
from kvstore.shard import Descriptor, Epoch
from kvstore.shard import commands as cmds
from kvstore.statemachine import Cas, Delete, LeaseGrant, LeaseRevoke, Put, encode_batch
from kvstore.statemachine.history import Event, EventKind, decode_event, encode_event
from kvstore.statemachine.types import KeyValue
from kvstore.storage import NodeStorage
from kvstore.storage.history import Compacted, FutureRevision, HistoryReader, Moved

G, C = 1, 9


def entry(index: int, data: bytes, term: int = 1) -> Entry:
    return Entry(term=term, index=index, type=EntryType.NORMAL, data=data)


def run(st: NodeStorage, group: int, index: int, data: bytes) -> None:
    e = entry(index, data)
    with st.write() as w:
        w.save(group, entries=[e])
        w.apply(group, [e])


def test_event_codec_round_trips_and_rejects_garbage() -> None:
    prev = KeyValue(b"k", b"old", 1, 2, 2)
    for e in (
        Event(5, EventKind.PUT, b"k", KeyValue(b"k", b"new", 2, 2, 5), prev),
        Event(5, EventKind.PUT, b"k", KeyValue(b"k", b"", 1, 5, 5), None),
        Event(7, EventKind.DELETE, b"k", None, prev),
    ):
        assert decode_event(e.revision, encode_event(e)) == e
    with pytest.raises(ValueError):
        decode_event(1, b"\x01\x05\x00ab")
    with pytest.raises(ValueError):
        decode_event(1, encode_event(Event(7, EventKind.DELETE, b"k", None, prev)) + b"x")


def test_every_change_is_an_event_and_nothing_else(tmp_path: object) -> None:
    """Puts, cas, deletes and a lease revoke's deletes are events; a failed cas, a
    delete of nothing and a retried write's replayed answer are not."""
    st = NodeStorage(str(tmp_path), map_size=16 << 20, sync=False)
    st.group(G).bootstrap({1})
    run(st, G, 1, encode_batch([LeaseGrant(5, 5000), Put(b"a", b"1", 7, 1, 1, lease=5)]))
    run(st, G, 2, encode_batch([Put(b"a", b"1", 7, 1, 1), Cas(b"a", b"x", b"no")]))
    run(st, G, 3, encode_batch([Delete(b"zz"), Cas(b"b", b"2", expected_version=0)]))
    run(st, G, 4, encode_batch([LeaseRevoke(5)]))
    events, _ = HistoryReader(st, G).events(1, b"", b"", 0, 0)
    assert [(e.revision, e.kind, e.key) for e in events] == [
        (1, EventKind.PUT, b"a"),
        (3, EventKind.PUT, b"b"),
        (4, EventKind.DELETE, b"a"),
    ]
    assert events[2].prev is not None and events[2].prev.value == b"1"
    st.close()


def _model_run(
    st: NodeStorage, rng: random.Random, entries: int, group: int = G, first: int = 1
) -> dict[int, dict[bytes, bytes]]:
    """Random batches of puts, deletes and cas over a few keys; returns the model's
    state after each entry (revision = index)."""
    state: dict[bytes, bytes] = {}
    states: dict[int, dict[bytes, bytes]] = {first - 1: dict(state)}
    keys = [b"a", b"b", b"c", b"d"]
    for i in range(first, first + entries):
        batch: list[Put | Delete | Cas] = []
        for _ in range(rng.randint(0, 4)):
            k = rng.choice(keys)
            r = rng.random()
            if r < 0.5:
                v = b"%d" % rng.randrange(100)
                batch.append(Put(k, v))
                state[k] = v
            elif r < 0.8:
                batch.append(Delete(k))
                state.pop(k, None)
            else:
                v = b"%d" % rng.randrange(100)
                if rng.random() < 0.3:  # a compare that fails: no event
                    batch.append(Cas(k, v, expected_value=b"never"))
                    continue
                cur = state.get(k)
                if cur is None:
                    batch.append(Cas(k, v, expected_version=0))
                else:
                    batch.append(Cas(k, v, expected_value=cur))
                state[k] = v
        run(st, group, i, encode_batch(batch))
        states[i] = dict(state)
    return states


@pytest.mark.parametrize("seed", range(4))
def test_get_at_every_retained_revision_matches_a_model(tmp_path: object, seed: int) -> None:
    st = NodeStorage(str(tmp_path), map_size=16 << 20, sync=False)
    st.history_revisions = 0  # keep all
    st.group(G).bootstrap({1})
    states = _model_run(st, random.Random(seed), 60)
    reader = HistoryReader(st, G)
    for rev in range(1, 61):
        for k in (b"a", b"b", b"c", b"d", b"zz"):
            kv, now, _, _ = reader.get_at(k, rev)
            assert now == 60
            assert (kv.value if kv else None) == states[rev].get(k), (rev, k)
            if kv is not None:
                assert kv.mod_revision <= rev
    # The events replay into the same states.
    events, through = reader.events(1, b"", b"", 0, 0)
    assert through == 60
    replay: dict[bytes, bytes] = {}
    last = 0
    for e in events:
        assert e.revision >= last
        last = e.revision
        if e.kind == EventKind.PUT:
            assert e.kv is not None and e.kv.mod_revision == e.revision
            replay[e.key] = e.kv.value
        else:
            replay.pop(e.key)
    assert replay == states[60]
    st.close()


def test_compact_through_the_log_and_the_compacted_error(tmp_path: object) -> None:
    st = NodeStorage(str(tmp_path), map_size=16 << 20, sync=False)
    st.history_revisions = 0
    st.group(G).bootstrap({1})
    for i in range(1, 11):
        run(st, G, i, encode_batch([Put(b"k", b"%d" % i)]))
    with st.write() as w:
        data = cmds.encode(cmds.Compact(6))
        w.save(G, entries=[entry(11, data)])
        w.apply(G, [entry(11, data)])
        assert w.admin_results[G] == {11: 6}
    reader = HistoryReader(st, G)
    assert reader.get_at(b"k", 7)[0].value == b"7"  # type: ignore[union-attr]
    with pytest.raises(Compacted) as exc:
        reader.get_at(b"k", 6)
    assert exc.value.compacted == 6 and "oldest available revision is 7" in str(exc.value)
    with pytest.raises(Compacted):
        reader.events(3, b"", b"", 0, 0)
    with pytest.raises(FutureRevision):
        reader.get_at(b"k", 12)
    # A compact past the current revision compacts to the entry's own; never lowers.
    for index, rev, want in ((12, 99, 12), (13, 2, 12)):
        with st.write() as w:
            data = cmds.encode(cmds.Compact(rev))
            w.save(G, entries=[entry(index, data)])
            w.apply(G, [entry(index, data)])
            assert w.admin_results[G] == {index: want}
    st.close()
    # Survives a restart.
    st = NodeStorage(str(tmp_path), map_size=16 << 20, sync=False)
    assert HistoryReader(st, G).compacted() == 12
    assert HistoryReader(st, G).get_at(b"k", 13)[0].value == b"10"  # type: ignore[union-attr]
    st.close()


def test_retention_window_compacts_and_sweeps(tmp_path: object) -> None:
    st = NodeStorage(str(tmp_path), map_size=16 << 20, sync=False)
    st.history_revisions = 5
    st.group(G).bootstrap({1})
    for i in range(1, 21):
        run(st, G, i, encode_batch([Put(b"k", b"%d" % i), Put(b"j", b"%d" % i)]))
    reader = HistoryReader(st, G)
    assert reader.compacted() == 15
    events, through = reader.events(16, b"", b"", 0, 0)
    assert [e.revision for e in events] == [16, 16, 17, 17, 18, 18, 19, 19, 20, 20]
    assert through == 20
    with st.env.begin() as txn:  # the compacted events are physically gone
        assert txn.stat(st.dbs.history)["entries"] == 1 + 10
    st.close()


def test_event_reads_filter_the_range_and_stop_between_revisions(tmp_path: object) -> None:
    st = NodeStorage(str(tmp_path), map_size=16 << 20, sync=False)
    st.group(G).bootstrap({1})
    run(st, G, 1, encode_batch([Put(b"a", b"1"), Put(b"b", b"1"), Put(b"c", b"1")]))
    run(st, G, 2, encode_batch([]))
    run(st, G, 3, encode_batch([Put(b"b", b"2"), Delete(b"a")]))
    run(st, G, 4, encode_batch([Put(b"b", b"3")]))
    reader = HistoryReader(st, G)
    events, through = reader.events(1, b"b", b"c", 0, 0)
    assert [(e.revision, e.key) for e in events] == [(1, b"b"), (3, b"b"), (4, b"b")]
    assert through == 4
    # A cap stops between two revisions, never inside one.
    events, through = reader.events(1, b"", b"", 2, 0)
    assert [e.revision for e in events] == [1, 1, 1] and through == 2
    events, through = reader.events(3, b"", b"", 1, 0)
    assert [(e.kind, e.key) for e in events] == [(EventKind.PUT, b"b"), (EventKind.DELETE, b"a")]
    assert through == 3
    events, through = reader.events(5, b"", b"", 0, 0)
    assert events == [] and through == 4
    st.close()


def test_a_read_of_a_narrow_range_looks_at_a_bounded_number_of_events(tmp_path: object) -> None:
    """A watch of a narrow range catching up through a busy history filtered every
    retained event in one read, on the node's event loop (seconds for a full window
    of batch entries). A read now stops between two revisions once it has looked at
    ``max_scanned`` events, matching or not, and says how far it is complete; reads
    from there on get every event of the range exactly once."""
    st = NodeStorage(str(tmp_path), map_size=64 << 20, sync=False)
    st.group(G).bootstrap({1})
    for i in range(1, 41):
        batch = [Put(b"a%04d" % j, b"%d" % i) for j in range(50)]
        if i % 10 == 0:
            batch.append(Put(b"z", b"%d" % i))
        run(st, G, i, encode_batch(batch))
    reader = HistoryReader(st, G)
    events, through, now = reader.events_now(1, b"z", b"z\0", 1000, 0, 500)
    assert now == 40 and through == 10  # 10 revisions (501 events) looked at, not 40
    assert [e.revision for e in events] == [10]
    got, nxt, reads = [], 1, 0
    while nxt <= now:
        events, through, _ = reader.events_now(nxt, b"z", b"z\0", 1000, 0, 500)
        got += [(e.revision, e.kv.value if e.kv else None) for e in events]
        nxt, reads = through + 1, reads + 1
    assert got == [(10, b"10"), (20, b"20"), (30, b"30"), (40, b"40")]
    assert reads == 4
    st.close()


def test_snapshot_install_starts_the_history_at_the_image(tmp_path: object) -> None:
    leader = NodeStorage(str(tmp_path) + "/a", map_size=16 << 20, sync=False)
    follower = NodeStorage(str(tmp_path) + "/b", map_size=16 << 20, sync=False)
    for s in (leader, follower):
        s.group(G).bootstrap({1, 2})
    run(follower, G, 1, encode_batch([Put(b"k", b"old")]))
    for i in range(1, 6):
        run(leader, G, i, encode_batch([Put(b"k", b"%d" % i)]))
    with leader.write() as w:
        w.compact(G, 5)
    snap = leader.group(G).snapshot()
    with follower.write() as w:
        w.save(G, snapshot=snap)
    reader = HistoryReader(follower, G)
    assert reader.compacted() == 5
    with pytest.raises(Compacted):
        reader.events(5, b"", b"", 0, 0)
    assert reader.events(6, b"", b"", 0, 0) == ([], 5)
    run(follower, G, 6, encode_batch([Put(b"k", b"6")]))
    assert [e.kv.value for e in reader.events(6, b"", b"", 0, 0)[0] if e.kv] == [b"6"]
    leader.close()
    follower.close()


def test_split_gives_the_new_shard_its_range_of_history(tmp_path: object) -> None:
    st = NodeStorage(str(tmp_path), map_size=16 << 20, sync=False)
    st.group(G).bootstrap({1, 2, 3}, Descriptor(id=G, voters=(1, 2, 3)))
    run(st, G, 1, encode_batch([Put(b"apple", b"1"), Put(b"pear", b"1")]))
    run(st, G, 2, encode_batch([Put(b"pear", b"2")]))
    run(st, G, 3, cmds.encode(cmds.Split(C, b"m", Epoch(1, 1))))
    run(st, C, 4, encode_batch([Put(b"pear", b"4")]))
    right = HistoryReader(st, C)
    events, through = right.events(1, b"m", b"", 0, 0)
    assert [(e.revision, e.key) for e in events] == [(1, b"pear"), (2, b"pear"), (4, b"pear")]
    assert through == 4
    assert right.get_at(b"pear", 1)[0].value == b"1"  # type: ignore[union-attr]
    st.close()


def test_a_data_directory_from_before_history_starts_it_at_the_applied_revision(
    tmp_path: object,
) -> None:
    st = NodeStorage(str(tmp_path), map_size=16 << 20, sync=False)
    st.group(G).bootstrap({1})
    for i in range(1, 4):
        run(st, G, i, encode_batch([Put(b"k", b"%d" % i)]))
    with st.write() as w:  # as if written by a version without history
        w._txn.drop(st.dbs.history, delete=False)
        w._txn.delete(b"\xffhistory_v1", db=st.dbs.meta)
    st.close()
    st = NodeStorage(str(tmp_path), map_size=16 << 20, sync=False)
    reader = HistoryReader(st, G)
    assert reader.compacted() == 3
    with pytest.raises(Compacted):
        reader.events(2, b"", b"", 0, 0)
    st.close()


def test_merge_starts_the_target_history_after_the_source_and_freezes_its_revision(
    tmp_path: object,
) -> None:
    L, R = 1, 2
    voters = (1, 2, 3)
    st = NodeStorage(str(tmp_path), map_size=16 << 20, sync=False)
    st.group(L).bootstrap(set(voters), Descriptor(id=L, end=b"m", voters=voters))
    st.group(R).bootstrap(set(voters), Descriptor(id=R, start=b"m", voters=voters))
    run(st, L, 1, encode_batch([Put(b"apple", b"1")]))
    for i in range(1, 9):
        run(st, R, i, encode_batch([Put(b"pear", b"%d" % i)]))
    src, tgt = st.group(R).view.shard, st.group(L).view.shard
    assert src is not None and tgt is not None
    run(st, R, 9, cmds.encode(cmds.PrepareMerge(L, src.epoch, tgt.epoch)))
    run(st, R, 10, encode_batch([]))  # a frozen source's entries move no revision
    source = HistoryReader(st, R)
    assert source.revision() == 9
    frozen = st.group(R).view.shard
    assert frozen is not None
    run(st, L, 2, cmds.encode(cmds.CommitMerge(frozen)))
    target = HistoryReader(st, L)
    # No resume at or below the source's last revision (its events went with it) ...
    assert target.compacted() == 9
    with pytest.raises(Compacted):
        target.events(5, b"m", b"", 0, 0)
    # ... and one above it misses nothing: every later revision is above it.
    run(st, L, 3, encode_batch([Put(b"pear", b"after")]))
    events, _ = target.events(10, b"", b"", 0, 0)
    assert [(e.key, e.kv.value) for e in events if e.kv] == [(b"pear", b"after")]
    assert events[0].revision > 9
    st.close()


def test_reads_of_a_range_the_group_no_longer_owns_are_refused(tmp_path: object) -> None:
    """A get at a revision or a watch read routed to the parent before a split, served
    from a snapshot after it (the scan thread runs later; the view the route check saw
    is published after the commit): the parent's history has none of the new shard's
    events, so it answered the new shard's later value for an earlier revision, and a
    watch claimed progress past revisions the new shard was still writing. The read
    checks ownership in its own snapshot and refuses (stale route)."""
    st = NodeStorage(str(tmp_path), map_size=16 << 20, sync=False)
    st.group(G).bootstrap({1, 2, 3}, Descriptor(id=G, voters=(1, 2, 3)))
    run(st, G, 1, encode_batch([Put(b"pear", b"1")]))
    run(st, G, 2, cmds.encode(cmds.Split(C, b"m", Epoch(1, 1))))
    run(st, G, 3, encode_batch([Put(b"apple", b"3")]))
    run(st, G, 4, encode_batch([Put(b"apple", b"4")]))
    run(st, C, 3, encode_batch([Put(b"pear", b"3")]))
    parent = HistoryReader(st, G)
    with pytest.raises(Moved):
        parent.get_at(b"pear", 2)  # pear was b"1" at 2; the old read said b"3"
    with pytest.raises(Moved):
        parent.events_now(2, b"a", b"", 0, 0)  # claimed complete through 4 for pear too
    assert parent.get_at(b"apple", 3)[0].value == b"3"  # type: ignore[union-attr]
    assert HistoryReader(st, C).get_at(b"pear", 2)[0].value == b"1"  # type: ignore[union-attr]
    st.close()
