"""The LMDB kv + sessions tables give the same answers as MemoryKV, command by command."""

from __future__ import annotations

import dataclasses
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

import kvstore.statemachine.apply as apply_mod
from kvstore.consensus.types import Entry
from kvstore.statemachine import (
    SESSION_WINDOW,
    ApplyError,
    Cas,
    Command,
    Delete,
    MemoryKV,
    Put,
    encode_batch,
)
from kvstore.storage import NodeStorage
from kvstore.storage.tables import GroupTables

KEYS = st.sampled_from([b"", b"a", b"b", b"\xff"])
SEQ = st.integers(1, 3 * SESSION_WINDOW)
CID = st.sampled_from([0, 1, 2, 2**64 - 1])
command = st.one_of(
    st.builds(Put, KEYS, st.binary(max_size=4), CID, SEQ),
    st.builds(Delete, KEYS, CID, SEQ),
    st.builds(
        Cas, KEYS, st.none() | st.binary(max_size=2), st.binary(max_size=2), st.none(), CID, SEQ
    ),
    st.builds(Cas, KEYS, st.none() | st.binary(max_size=2), st.none(), st.integers(0, 3), CID, SEQ),
)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(command, min_size=1, max_size=6), min_size=1, max_size=12),
    st.lists(
        st.tuples(KEYS | st.binary(max_size=2), KEYS | st.binary(max_size=2), st.integers(-1, 3)),
        max_size=5,
    ),
)
def test_lmdb_tables_match_memory_kv(
    tmp_path_factory: object,
    batches: list[list[Command]],
    scans: list[tuple[bytes, bytes, int]],
) -> None:
    path = tmp_path_factory.mktemp("tables")  # type: ignore[attr-defined]
    model = MemoryKV()
    # Sweep for idle sessions every 4 entries so expiry is exercised too.
    with (
        NodeStorage(str(path), map_size=16 << 20, sync=False) as st_,
        patch.object(apply_mod, "SESSION_SWEEP_EVERY", 4),
        patch.object(apply_mod, "SESSION_IDLE_ENTRIES", 5),
    ):
        for i, cmds in enumerate(batches, start=1):
            e = Entry(term=1, index=i, data=encode_batch(cmds))
            with st_.write() as w:
                w.save(3, entries=[e])
                got = w.apply(3, [e])
            assert got == model.apply(i, cmds)
        assert st_.kv(3).scan() == model.scan(b"")
        for start, end, limit in scans:
            assert st_.kv(3).scan(start, end, limit) == model.scan(start, end, limit)
        with st_.env.begin() as txn:
            rows = list(GroupTables(txn, st_.dbs, 3).raw_sessions())
        assert [(c, s) for c, s, _ in rows] == sorted(
            (c, s) for c, seqs in model.sessions.items() for s in seqs
        )


def test_session_window_in_lmdb(tmp_path: object) -> None:
    with NodeStorage(f"{tmp_path}/n", sync=False) as st_:

        def run(index: int, *cmds: Command) -> list:  # type: ignore[type-arg]
            e = Entry(term=1, index=index, data=encode_batch(list(cmds)))
            with st_.write() as w:
                w.save(1, entries=[e])
                return w.apply(1, [e])

        [first] = run(1, Put(b"a", b"1", client_id=5, seq=10))
        [far] = run(2, Put(b"a", b"2", client_id=5, seq=10 + SESSION_WINDOW))
        [expired] = run(3, Put(b"a", b"1", client_id=5, seq=10))
        assert expired.error == ApplyError.SESSION_EXPIRED and not expired.ok
        [inside] = run(4, Put(b"b", b"1", client_id=5, seq=11))
        assert inside.ok and inside.error == ApplyError.NONE
        assert run(5, Put(b"a", b"2", client_id=5, seq=10 + SESSION_WINDOW)) == [
            dataclasses.replace(far, index=5)
        ]
        [neighbour] = run(6, Put(b"c", b"1", client_id=4, seq=10))
        [other_group_client] = run(7, Put(b"c", b"1", client_id=6, seq=10))
        assert neighbour.ok and other_group_client.ok and first.ok


def test_idle_sessions_expire_at_fixed_log_positions(tmp_path: object) -> None:
    model = MemoryKV()
    with (
        NodeStorage(f"{tmp_path}/n", sync=False) as st_,
        patch.object(apply_mod, "SESSION_SWEEP_EVERY", 8),
        patch.object(apply_mod, "SESSION_IDLE_ENTRIES", 5),
    ):
        writes = {1: Put(b"a", b"1", client_id=1, seq=1), 4: Put(b"b", b"1", client_id=2, seq=1)}
        ents = [
            Entry(term=1, index=i, data=encode_batch([writes[i]]) if i in writes else b"")
            for i in range(1, 10)
        ]
        with st_.write() as w:
            w.save(1, entries=ents)
            w.apply(1, ents[:7])
        for i in range(1, 8):
            model.apply(i, [writes[i]] if i in writes else [])
        assert set(model.sessions) == {1, 2}
        with st_.write() as w:
            w.apply(1, ents[7:8])
        model.apply(8, [])
        assert set(model.sessions) == {2}, "client 1 idle since entry 1 <= 8 - 5"
        with st_.env.begin() as txn:
            assert [c for c, _, _ in GroupTables(txn, st_.dbs, 1).raw_sessions()] == [2]
        with st_.write() as w:
            [again] = w.apply(
                1, [*ents[8:9], Entry(term=1, index=10, data=encode_batch([writes[1]]))]
            )
        assert again.ok and again.kv is not None and again.kv.version == 2, (
            "an expired client's retry applies again: the documented price of expiry"
        )
