"""The LMDB kv + sessions tables give the same answers as MemoryKV, command by command."""

from __future__ import annotations

from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

import kvstore.statemachine.apply as apply_mod
import kvstore.storage.writer as writer_mod
from kvstore.consensus.types import Entry
from kvstore.statemachine import (
    SESSION_WINDOW,
    ApplyError,
    ApplyResult,
    Cas,
    Command,
    Delete,
    MemoryKV,
    Put,
    encode_batch,
)
from kvstore.storage import NodeStorage
from kvstore.storage.tables import GroupTables

from . import sessions_view

KEYS = st.sampled_from([b"", b"a", b"b", b"\xff"])
SEQ = st.integers(1, 3 * SESSION_WINDOW)
CID = st.sampled_from([0, 1, 2, 2**64 - 1])
INC = st.sampled_from([1, 2, 2**64 - 1])
command = st.one_of(
    st.builds(Put, KEYS, st.binary(max_size=4), CID, SEQ, INC),
    st.builds(Delete, KEYS, CID, SEQ, INC),
    st.builds(
        Cas,
        KEYS,
        st.none() | st.binary(max_size=2),
        st.binary(max_size=2),
        st.none(),
        CID,
        SEQ,
        INC,
    ),
    st.builds(
        Cas, KEYS, st.none() | st.binary(max_size=2), st.none(), st.integers(0, 3), CID, SEQ, INC
    ),
)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(command, min_size=1, max_size=6), st.integers(0, 40)),
        min_size=1,
        max_size=12,
    ),
    st.lists(
        st.tuples(KEYS | st.binary(max_size=2), KEYS | st.binary(max_size=2), st.integers(-1, 3)),
        max_size=5,
    ),
)
def test_lmdb_tables_match_memory_kv(
    tmp_path_factory: object,
    batches: list[tuple[list[Command], int]],
    scans: list[tuple[bytes, bytes, int]],
) -> None:
    path = tmp_path_factory.mktemp("tables")  # type: ignore[attr-defined]
    model = MemoryKV()
    # Short idle bounds so expiry by entries and by log time is exercised too, and a
    # one-session sweep so expired sessions linger in LMDB (they must count as absent).
    with (
        NodeStorage(str(path), map_size=16 << 20, sync=False) as st_,
        patch.object(apply_mod, "SESSION_IDLE_ENTRIES", 5),
        patch.object(apply_mod, "SESSION_IDLE_MS", 50),
        patch.object(writer_mod, "SWEEP_SESSIONS", 1),
    ):
        t = 1000
        for i, (cmds, dt) in enumerate(batches, start=1):
            t += dt
            e = Entry(term=1, index=i, data=encode_batch(cmds, t))
            with st_.write() as w:
                w.save(3, entries=[e])
                got = w.apply(3, [e])
            assert got == model.apply(i, cmds, t)
            assert sessions_view.stored(st_, 3) == sessions_view.model(model)
        assert st_.kv(3).scan() == model.scan(b"")
        for start, end, limit in scans:
            assert st_.kv(3).scan(start, end, limit) == model.scan(start, end, limit)


def test_session_window_in_lmdb(tmp_path: object) -> None:
    with NodeStorage(f"{tmp_path}/n", sync=False) as st_:

        def run(index: int, *cmds: Command) -> list:  # type: ignore[type-arg]
            e = Entry(term=1, index=index, data=encode_batch(list(cmds)))
            with st_.write() as w:
                w.save(1, entries=[e])
                return w.apply(1, [e])

        [first] = run(1, Put(b"a", b"1", client_id=5, seq=10, incarnation=9))
        [far] = run(2, Put(b"a", b"2", client_id=5, seq=10 + SESSION_WINDOW, incarnation=9))
        [expired] = run(3, Put(b"a", b"1", client_id=5, seq=10, incarnation=9))
        assert expired.error == ApplyError.SESSION_EXPIRED and not expired.ok
        [inside] = run(4, Put(b"b", b"1", client_id=5, seq=11, incarnation=9))
        assert inside.ok and inside.error == ApplyError.NONE
        assert run(5, Put(b"a", b"2", client_id=5, seq=10 + SESSION_WINDOW, incarnation=9)) == [
            ApplyResult(5, far.revision, True, None, None)
        ]
        [neighbour] = run(6, Put(b"c", b"1", client_id=4, seq=10, incarnation=9))
        [other_group_client] = run(7, Put(b"c", b"1", client_id=6, seq=10, incarnation=9))
        [next_incarnation] = run(8, Put(b"c", b"1", client_id=5, seq=10, incarnation=10))
        [last_incarnation] = run(9, Put(b"c", b"1", client_id=5, seq=10, incarnation=2**64 - 1))
        assert neighbour.ok and other_group_client.ok and first.ok
        assert next_incarnation.revision == 8 and last_incarnation.revision == 9


def test_expired_sessions_are_absent_before_the_sweep_reaches_them(tmp_path: object) -> None:
    model = MemoryKV()
    with (
        NodeStorage(f"{tmp_path}/n", sync=False) as st_,
        patch.object(apply_mod, "SESSION_IDLE_ENTRIES", 5),
        patch.object(writer_mod, "SWEEP_SESSIONS", 1),
    ):
        writes = {
            1: [Put(b"a", b"1", client_id=1, seq=1, incarnation=1)],
            2: [Put(b"b", b"1", client_id=c, seq=1, incarnation=1) for c in (2, 3, 4)],
            10: [Put(b"a", b"1", client_id=1, seq=1, incarnation=1)],
        }
        ents = [
            Entry(term=1, index=i, data=encode_batch(writes[i]) if i in writes else b"")
            for i in range(1, 11)
        ]
        with st_.write() as w:
            w.save(1, entries=ents)
        for e in ents[:9]:
            with st_.write() as w:
                w.apply(1, [e])
            model.apply(e.index, writes.get(e.index, []))
        assert set(model.sessions) == set(), "all idle for more than 5 entries"
        with st_.env.begin() as txn:
            rows = [k for k, _ in GroupTables(txn, st_.dbs, 1).raw_sessions()]
        assert rows, "a one-session sweep has not reached every session yet"
        assert sessions_view.stored(st_, 1) == sessions_view.model(model)
        with st_.write() as w:
            [again] = w.apply(1, ents[9:])
        assert again.kv is not None and again.kv.version == 2, (
            "an expired client's retry applies again: the documented price of expiry"
        )
