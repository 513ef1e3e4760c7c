"""The LMDB kv + sessions tables give the same answers as MemoryKV, command by command."""

from __future__ import annotations

import time
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
from kvstore.statemachine.apply import SessionState
from kvstore.statemachine.records import encode_result, encode_session
from kvstore.storage import NodeStorage, keys
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
        patch.object(apply_mod, "SESSION_FORGET_ENTRIES", 9),
        patch.object(apply_mod, "SESSION_FORGET_MS", 120),
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
        patch.object(apply_mod, "SESSION_FORGET_ENTRIES", 6),
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
            if e.index in writes:
                model.apply(e.index, writes[e.index])
            else:
                model.skip(e.index)  # empty data: not a batch
        assert set(model.sessions) == set(), "all idle for more than 6 entries: forgotten"
        with st_.env.begin() as txn:
            rows = [k for k, _ in GroupTables(txn, st_.dbs, 1).raw_sessions()]
        assert rows, "a one-session sweep has not reached every session yet"
        assert sessions_view.stored(st_, 1) == sessions_view.model(model)
        with st_.write() as w:
            [again] = w.apply(1, ents[9:])
        assert again.kv is not None and again.kv.version == 2, (
            "a forgotten client's retry applies again: the documented price of forgetting"
        )


def test_overwriting_a_big_value_keeps_the_session_table_small(tmp_path: object) -> None:
    # Issue 11.2: sessions stored the previous and new value of every remembered write:
    # 200 overwrites of a 256 KiB value left 0.3 MiB of data and 100 MiB of sessions.
    value = b"v" * (256 << 10)
    with NodeStorage(f"{tmp_path}/n", map_size=1 << 30, sync=False) as st_:
        for i in range(1, 201):
            e = Entry(term=1, index=i, data=encode_batch([Put(b"k", value, 77, i)]))
            with st_.write() as w:
                w.save(1, entries=[e])
                w.compact(1, i - 1)
                [r] = w.apply(1, [e])
            assert r.ok and r.revision == i
        with st_.env.begin() as txn:
            s = txn.stat(st_.dbs.sessions)
        pages = s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
        assert pages * s["psize"] < 64 << 10, f"{pages} pages of sessions for 200 outcomes"


def test_a_persist_sweeps_a_bounded_part_of_200k_sessions(tmp_path: object) -> None:
    # Issue 11.2: the idle-session sweep scanned the whole table in one persist (480 ms
    # for 200,000 sessions). Now each persist looks at a bounded number of them.
    n = 200_000
    with NodeStorage(f"{tmp_path}/n", map_size=1 << 30, sync=False) as st_:
        state = encode_session(SessionState(1, 1, 1000))
        outcome = encode_result(ApplyResult(1, 1, True, None, None))
        rows = []
        for c in range(1, n + 1):
            rows += [(keys.session_key(1, c, 1), state), (keys.outcome_key(1, c, 1, 1), outcome)]
        with st_.env.begin(write=True) as txn:
            txn.cursor(db=st_.dbs.sessions).putmulti(rows, append=True)
        t = 1000 + apply_mod.SESSION_FORGET_MS + 1  # every session is now forgotten
        ents = [Entry(term=1, index=i, data=encode_batch([Put(b"x", b"y")], t)) for i in (1, 2)]
        with st_.write() as w:
            w.save(1, entries=ents)
        before = _session_rows(st_)
        t0 = time.perf_counter()
        with st_.write() as w:
            w.apply(1, ents[:1])
        took = time.perf_counter() - t0
        first = before - _session_rows(st_)
        # Two rows a session (its state and one outcome); the clock row costs one step.
        assert 0 < first <= 2 * writer_mod.SWEEP_SESSIONS, first
        assert took < 0.25, f"one persist took {took * 1000:.0f} ms"
        with st_.write() as w:
            w.apply(1, ents[1:])
        assert before - _session_rows(st_) - first == 2 * writer_mod.SWEEP_SESSIONS, "it goes on"


def _session_rows(st_: NodeStorage) -> int:
    with st_.env.begin() as txn:
        return int(txn.stat(st_.dbs.sessions)["entries"])
