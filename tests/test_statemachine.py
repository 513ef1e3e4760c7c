"""The state machine: batch codec, records, put/delete/cas semantics and sessions.

All against MemoryKV (the reference twin); tests/storage/test_tables.py holds the LMDB
tables to the same answers.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.statemachine import (
    MAX_KEY_SIZE,
    SESSION_FORGET_ENTRIES,
    SESSION_FORGET_MS,
    SESSION_IDLE_ENTRIES,
    SESSION_IDLE_MS,
    SESSION_WINDOW,
    ApplyError,
    ApplyResult,
    BatchDecodeError,
    Cas,
    Command,
    Delete,
    KeyValue,
    MemoryKV,
    Put,
    decode_batch,
    decode_entry,
    encode_batch,
    entry_stamp,
)
from kvstore.statemachine.commands import Batch
from kvstore.statemachine.records import decode_kv, decode_result, encode_kv, encode_result

U64 = st.integers(min_value=0, max_value=2**64 - 1)
small_bytes = st.binary(max_size=12)


@st.composite
def commands(draw: st.DrawFn) -> Command:
    key = draw(small_bytes)
    cid, seq, inc = draw(U64), draw(U64), draw(U64)
    kind = draw(st.sampled_from(["put", "delete", "cas"]))
    if kind == "put":
        return Put(key, draw(small_bytes), cid, seq, inc)
    if kind == "delete":
        return Delete(key, cid, seq, inc)
    ev = draw(st.none() | small_bytes)
    ever = draw(st.none() | U64) if ev is not None else draw(U64)
    return Cas(key, draw(st.none() | small_bytes), ev, ever, cid, seq, inc)


key_values = st.builds(KeyValue, small_bytes, small_bytes, U64, U64, U64)
stored_results = st.builds(
    lambda rev, ok, err: ApplyResult(rev, rev, ok, None, None, err),
    U64,
    st.booleans(),
    st.sampled_from(ApplyError),
)


# -- codec ------------------------------------------------------------------------
@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(st.lists(commands(), max_size=8), U64, U64)
def test_batch_roundtrip(batch: list[Command], time_ms: int, stamp: int) -> None:
    assert decode_entry(encode_batch(batch, time_ms, stamp)) == Batch(batch, time_ms, stamp)
    assert entry_stamp(encode_batch(batch, time_ms, stamp)) == stamp
    assert decode_batch(encode_batch(batch)) == batch


def test_version_1_batches_still_decode() -> None:
    # Logs written before incarnations and time stamps: u8 1, u32 count, then per
    # command u8 op, u8 flags, u64 client, u64 seq, u32 key length, key, ...
    v1 = (
        b"\x01" + (2).to_bytes(4, "little")
        + b"\x01\x00" + (7).to_bytes(8, "little") + (3).to_bytes(8, "little")
        + (1).to_bytes(4, "little") + b"k" + (1).to_bytes(4, "little") + b"v"
        + b"\x02\x00" + (0).to_bytes(8, "little") + (0).to_bytes(8, "little")
        + (1).to_bytes(4, "little") + b"d"
    )  # fmt: skip
    assert decode_entry(v1) == Batch([Put(b"k", b"v", 7, 3), Delete(b"d")], 0)


def test_version_2_batches_still_decode_unstamped() -> None:
    # Logs written before hybrid clock stamps: the version 3 layout without the stamp.
    v3 = encode_batch([Put(b"k", b"v", 7, 3, 9)], 1234, 5678)
    v2 = b"\x02" + v3[1:13] + v3[21:]
    assert decode_entry(v2) == Batch([Put(b"k", b"v", 7, 3, 9)], 1234, 0)
    assert entry_stamp(v2) == 0


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(st.binary(max_size=64))
def test_junk_raises_only_batch_decode_error(junk: bytes) -> None:
    try:
        batch = decode_batch(junk)
    except BatchDecodeError:
        return
    if junk[0] == 3:
        e = decode_entry(junk)
        assert encode_batch(batch, e.time_ms, e.stamp) == junk, "canonical form"


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(st.lists(commands(), min_size=1, max_size=4), st.data())
def test_truncated_or_extended_batch_is_rejected(batch: list[Command], data: st.DataObject) -> None:
    raw = encode_batch(batch)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    with pytest.raises(BatchDecodeError):
        decode_batch(raw[:cut])
    with pytest.raises(BatchDecodeError, match="trailing"):
        decode_batch(raw + b"\x00")


def test_huge_count_is_rejected_before_looping() -> None:
    with pytest.raises(BatchDecodeError, match="does not fit"):
        decode_batch(b"\x02\xff\xff\xff\xff" + bytes(8))


def test_unknown_version_is_rejected() -> None:
    with pytest.raises(BatchDecodeError, match="version"):
        decode_batch(b"\x04" + encode_batch([])[1:])
    with pytest.raises(BatchDecodeError, match="version"):
        decode_batch(b"")


def test_out_of_range_fields_raise_value_error() -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_batch([Put(b"k", b"v", client_id=-1)])
    with pytest.raises(ValueError, match="out of range"):
        encode_batch([Delete(b"k", seq=2**64)])


def test_cas_needs_an_expectation() -> None:
    with pytest.raises(ValueError, match="expected_value or expected_version"):
        Cas(b"k", b"v")
    with pytest.raises(ValueError, match=">= 0"):
        Cas(b"k", b"v", expected_version=-1)


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(key_values)
def test_kv_record_roundtrip(kv: KeyValue) -> None:
    assert decode_kv(kv.key, encode_kv(kv)) == kv


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(stored_results)
def test_result_record_roundtrip(r: ApplyResult) -> None:
    assert decode_result(encode_result(r)) == r


def test_result_record_keeps_no_values() -> None:
    big = KeyValue(b"k", b"x" * (256 << 10), 3, 1, 9)
    raw = encode_result(ApplyResult(9, 9, True, big, big))
    assert len(raw) < 16 and decode_result(raw) == ApplyResult(9, 9, True, None, None)


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(stored_results, st.data())
def test_truncated_result_record_raises_value_error(r: ApplyResult, data: st.DataObject) -> None:
    raw = encode_result(r)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    with pytest.raises(ValueError):
        decode_result(raw[:cut])
    with pytest.raises(ValueError):
        decode_result(raw + b"\x00")


# -- semantics ----------------------------------------------------------------------
def test_put_versions_and_revisions() -> None:
    m = MemoryKV()
    [r1] = m.apply(3, [Put(b"a", b"1")])
    assert r1 == ApplyResult(3, 3, True, None, KeyValue(b"a", b"1", 1, 3, 3))
    [r2] = m.apply(5, [Put(b"a", b"2")])
    assert r2.prev == r1.kv
    assert r2.kv == KeyValue(b"a", b"2", 2, 3, 5)
    assert m.applied == 5


def test_same_key_twice_in_one_entry() -> None:
    m = MemoryKV()
    r = m.apply(7, [Put(b"a", b"1"), Put(b"a", b"2")])
    assert [x.kv for x in r] == [KeyValue(b"a", b"1", 1, 7, 7), KeyValue(b"a", b"2", 2, 7, 7)]


def test_delete_then_recreate_resets_version() -> None:
    m = MemoryKV()
    m.apply(1, [Put(b"a", b"1"), Put(b"a", b"2")])
    [d] = m.apply(2, [Delete(b"a")])
    assert d.ok and d.kv is None and d.prev == KeyValue(b"a", b"2", 2, 1, 1)
    [again] = m.apply(3, [Delete(b"a")])
    assert not again.ok and again.prev is None
    [p] = m.apply(4, [Put(b"a", b"3")])
    assert p.kv == KeyValue(b"a", b"3", 1, 4, 4)


def test_cas_on_version() -> None:
    m = MemoryKV()
    [absent] = m.apply(1, [Cas(b"a", b"1", expected_version=0)])
    assert absent.ok and absent.kv == KeyValue(b"a", b"1", 1, 1, 1)
    [again] = m.apply(2, [Cas(b"a", b"x", expected_version=0)])
    assert not again.ok and again.kv == again.prev == KeyValue(b"a", b"1", 1, 1, 1)
    [v1] = m.apply(3, [Cas(b"a", b"2", expected_version=1)])
    assert v1.ok and v1.kv == KeyValue(b"a", b"2", 2, 1, 3)


def test_cas_on_value_and_delete_on_success() -> None:
    m = MemoryKV()
    [miss] = m.apply(1, [Cas(b"a", b"1", expected_value=b"")])
    assert not miss.ok and miss.kv is None, "an absent key never matches a value"
    m.apply(2, [Put(b"a", b"old")])
    [wrong] = m.apply(3, [Cas(b"a", b"new", expected_value=b"other")])
    assert not wrong.ok and m.get(b"a") == KeyValue(b"a", b"old", 1, 2, 2)
    [both] = m.apply(4, [Cas(b"a", b"new", expected_value=b"old", expected_version=2)])
    assert not both.ok, "every given expectation must hold"
    [gone] = m.apply(5, [Cas(b"a", None, expected_value=b"old", expected_version=1)])
    assert gone.ok and gone.kv is None and m.get(b"a") is None


def test_key_too_large_is_refused_without_change() -> None:
    m = MemoryKV()
    [r] = m.apply(1, [Put(b"k" * (MAX_KEY_SIZE + 1), b"v")])
    assert r == ApplyResult(1, 1, False, None, None, ApplyError.KEY_TOO_LARGE)
    assert m.data == {}
    [ok] = m.apply(2, [Put(b"k" * MAX_KEY_SIZE, b"v")])
    assert ok.ok


def test_scan_range_and_limit() -> None:
    m = MemoryKV()
    m.apply(1, [Put(k, k) for k in (b"a", b"b", b"c", b"d")])
    assert [kv.key for kv in m.scan(b"b", b"d")] == [b"b", b"c"]
    assert [kv.key for kv in m.scan(b"b")] == [b"b", b"c", b"d"]
    assert [kv.key for kv in m.scan(b"", b"", 2)] == [b"a", b"b"]


# -- sessions -------------------------------------------------------------------------
def test_retried_seq_returns_the_original_result_and_does_not_apply() -> None:
    m = MemoryKV()
    [first] = m.apply(1, [Put(b"a", b"1", client_id=9, seq=1, incarnation=1)])
    m.apply(2, [Put(b"a", b"2")])
    [retry] = m.apply(3, [Put(b"a", b"1", client_id=9, seq=1, incarnation=1)])
    assert retry == ApplyResult(3, first.revision, True, None, None), "outcome, no values"
    assert m.get(b"a") == KeyValue(b"a", b"2", 2, 1, 2)


def test_a_new_incarnation_is_a_new_session() -> None:
    # Issue 11.1: a client restarted with the same client_id starts again at seq 1; it
    # must not get the earlier process's answers (and must really write).
    m = MemoryKV()
    m.apply(1, [Put(b"k", b"v1", client_id=5, seq=1, incarnation=111)])
    m.apply(2, [Cas(b"c", b"x", expected_version=0, client_id=5, seq=2, incarnation=111)])
    [put] = m.apply(3, [Put(b"k", b"v2", client_id=5, seq=1, incarnation=222)])
    [cas] = m.apply(4, [Cas(b"c", b"y", expected_value=b"x", client_id=5, seq=2, incarnation=222)])
    assert put.revision == 3 and m.get(b"k") == KeyValue(b"k", b"v2", 2, 1, 3)
    assert cas.ok and m.get(b"c") == KeyValue(b"c", b"y", 2, 2, 4)
    [old_retry] = m.apply(5, [Put(b"k", b"v1", client_id=5, seq=1, incarnation=111)])
    assert old_retry.revision == 1, "the first process's retries still get its answers"


def test_retry_in_a_batch_keeps_every_result_at_its_command() -> None:
    # Jepsen found a cas answered True with a put's result: a replayed answer named the
    # original entry, and the driver matches answers to commands by entry index.
    m = MemoryKV()
    m.apply(1, [Put(b"a", b"1", client_id=9, seq=1, incarnation=1)])
    results = m.apply(
        2,
        [
            Put(b"a", b"1", client_id=9, seq=1, incarnation=1),
            Cas(b"a", b"3", expected_value=b"2", client_id=9, seq=2, incarnation=1),
        ],
    )
    assert [r.index for r in results] == [2, 2]
    assert [r.ok for r in results] == [True, False]


def test_sessions_are_per_client() -> None:
    m = MemoryKV()
    m.apply(1, [Put(b"a", b"1", client_id=1, seq=1, incarnation=1)])
    [other] = m.apply(2, [Put(b"a", b"2", client_id=2, seq=1, incarnation=1)])
    assert other.ok and other.kv == KeyValue(b"a", b"2", 2, 1, 2)


def test_client_zero_has_no_session() -> None:
    m = MemoryKV()
    m.apply(1, [Put(b"a", b"1")])
    [r] = m.apply(2, [Put(b"a", b"1")])
    assert r.kv is not None and r.kv.version == 2
    assert m.sessions == {}


def test_out_of_order_seqs_inside_the_window_apply_once_each() -> None:
    m = MemoryKV()
    m.apply(1, [Put(b"a", b"5", client_id=4, seq=5, incarnation=1)])
    [late] = m.apply(2, [Put(b"b", b"4", client_id=4, seq=4, incarnation=1)])
    assert late.ok and m.get(b"b") is not None
    [dup] = m.apply(3, [Put(b"b", b"4", client_id=4, seq=4, incarnation=1)])
    assert dup == ApplyResult(3, late.revision, True, None, None)


def test_seq_below_the_window_is_refused_as_expired() -> None:
    m = MemoryKV()
    m.apply(1, [Put(b"a", b"x", client_id=4, seq=1, incarnation=1)])
    m.apply(2, [Put(b"a", b"y", client_id=4, seq=1 + SESSION_WINDOW, incarnation=1)])
    assert 1 not in m.sessions[4, 1].results, "the window forgets seqs <= last - WINDOW"
    [old] = m.apply(3, [Put(b"a", b"x", client_id=4, seq=1, incarnation=1)])
    assert old == ApplyResult(3, 3, False, None, None, ApplyError.SESSION_EXPIRED)
    [never] = m.apply(4, [Put(b"z", b"x", client_id=4, seq=0, incarnation=1)])
    assert never.error == ApplyError.SESSION_EXPIRED and m.get(b"z") is None
    [inside] = m.apply(5, [Put(b"z", b"x", client_id=4, seq=2, incarnation=1)])
    assert inside.ok


def test_failed_cas_result_is_also_remembered() -> None:
    m = MemoryKV()
    [fail] = m.apply(1, [Cas(b"a", b"1", expected_value=b"0", client_id=3, seq=1, incarnation=1)])
    m.apply(2, [Put(b"a", b"0")])
    [retry] = m.apply(3, [Cas(b"a", b"1", expected_value=b"0", client_id=3, seq=1, incarnation=1)])
    assert retry == ApplyResult(3, fail.revision, False, None, None)


def test_sessions_expire_by_entries_and_by_log_time() -> None:
    m = MemoryKV()
    t0 = 1_700_000_000_000
    m.apply(1, [Put(b"a", b"1", client_id=1, seq=1, incarnation=1)], time_ms=t0)
    m.apply(2, [Put(b"b", b"1", client_id=2, seq=1, incarnation=1)], time_ms=t0 + 1000)
    m.apply(3, [], time_ms=t0 - 60_000)  # a leader with a slow clock: log time holds
    assert m.now_ms == t0 + 1000
    m.apply(4, [Put(b"c", b"1")], time_ms=t0 + SESSION_IDLE_MS)
    [kept] = m.apply(5, [Put(b"a", b"1", client_id=1, seq=1, incarnation=1)])
    assert kept.revision == 1, "idle exactly SESSION_IDLE_MS: kept, the retry deduplicated"
    m.apply(6, [Put(b"c", b"2")], time_ms=t0 + SESSION_IDLE_MS + 1)
    assert m.sessions[1, 1].results == {}, "client 1 idle longer: expired, outcomes gone"
    # An expired session refuses every command, retried or new, and applies nothing.
    for seq in (1, 2):
        [refused] = m.apply(7, [Put(b"a", b"x", client_id=1, seq=seq, incarnation=1)])
        assert refused.error == ApplyError.SESSION_EXPIRED and not refused.ok
    assert m.get(b"a") is not None and m.get(b"a").value == b"1"  # type: ignore[union-attr]
    [fresh] = m.apply(8, [Put(b"a", b"x", client_id=1, seq=1, incarnation=2)])
    assert fresh.ok, "a new incarnation is a new session"
    m.apply(9, [], time_ms=t0 + SESSION_FORGET_MS + 1)
    assert (1, 1) not in m.sessions, "forgotten after SESSION_FORGET_MS"
    [again] = m.apply(10, [Put(b"a", b"1", client_id=1, seq=1, incarnation=1)])
    assert again.ok, "a forgotten client's retry applies again: the price of forgetting"
    m2 = MemoryKV()
    m2.apply(2, [Put(b"b", b"1", client_id=2, seq=1, incarnation=1)])
    m2.apply(2 + SESSION_IDLE_ENTRIES, [])
    assert m2.sessions[2, 1].results, "idle exactly SESSION_IDLE_ENTRIES entries: kept"
    [refused] = m2.apply(
        3 + SESSION_IDLE_ENTRIES, [Put(b"b", b"1", client_id=2, seq=1, incarnation=1)]
    )
    assert refused.error == ApplyError.SESSION_EXPIRED, "idle more than SESSION_IDLE_ENTRIES"
    m2.apply(3 + SESSION_FORGET_ENTRIES, [])
    assert (2, 1) not in m2.sessions, "forgotten after SESSION_FORGET_ENTRIES entries"
