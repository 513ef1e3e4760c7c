"""The LMDB kv + sessions tables give the same answers as MemoryKV, command by command."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

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

KEYS = st.sampled_from([b"", b"a", b"b", b"\xff"])
SEQ = st.integers(1, 3 * SESSION_WINDOW)
CID = st.sampled_from([0, 1, 2])
command = st.one_of(
    st.builds(Put, KEYS, st.binary(max_size=4), CID, SEQ),
    st.builds(Delete, KEYS, CID, SEQ),
    st.builds(
        Cas, KEYS, st.none() | st.binary(max_size=2), st.binary(max_size=2), st.none(), CID, SEQ
    ),
    st.builds(Cas, KEYS, st.none() | st.binary(max_size=2), st.none(), st.integers(0, 3), CID, SEQ),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(command, min_size=1, max_size=6), min_size=1, max_size=12))
def test_lmdb_tables_match_memory_kv(
    tmp_path_factory: object, batches: list[list[Command]]
) -> None:
    path = tmp_path_factory.mktemp("tables")  # type: ignore[attr-defined]
    model = MemoryKV()
    with NodeStorage(str(path), map_size=16 << 20, sync=False) as st_:
        for i, cmds in enumerate(batches, start=1):
            e = Entry(term=1, index=i, data=encode_batch(cmds))
            with st_.write() as w:
                w.save(3, entries=[e])
                got = w.apply(3, [e])
            assert got == model.apply(i, cmds)
        assert st_.kv(3).scan() == model.scan(b"")


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
        assert run(5, Put(b"a", b"2", client_id=5, seq=10 + SESSION_WINDOW)) == [far]
        [neighbour] = run(6, Put(b"c", b"1", client_id=4, seq=10))
        [other_group_client] = run(7, Put(b"c", b"1", client_id=6, seq=10))
        assert neighbour.ok and other_group_client.ok and first.ok
