"""Key layout and stored encodings: roundtrips, ordering, and checksums that catch flips."""

from __future__ import annotations

import io
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.consensus.types import ConfState, Entry, EntryType, HardState, SnapshotMetadata
from kvstore.storage import CorruptionError, codec, keys, snapshot
from kvstore.storage.snapshot import read_image, write_image

U64 = st.integers(min_value=0, max_value=2**64 - 1)
GROUP = st.integers(min_value=0, max_value=keys.MAX_GROUP)
ids = st.frozensets(st.integers(min_value=1, max_value=2**64 - 1), max_size=5)
entries = st.builds(
    Entry, term=U64, index=U64, type=st.sampled_from(EntryType), data=st.binary(max_size=40)
)


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(st.binary(max_size=20), st.binary(max_size=20))
def test_kv_keys_sort_as_user_keys_and_stay_in_the_data_range(k1: bytes, k2: bytes) -> None:
    """User data is one key space per node (no group prefix): stored keys sort like the
    user keys, and range bounds (kv_end) bracket them."""
    a, b = keys.kv_key(k1), keys.kv_key(k2)
    assert (a < b) == (k1 < k2)
    assert keys.kv_key(b"") <= a < keys.kv_end(b"")
    assert (a < keys.kv_end(k2)) == (k1 < k2 or not k2)


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(GROUP, U64, GROUP, U64)
def test_log_keys_sort_by_group_then_index(g1: int, i1: int, g2: int, i2: int) -> None:
    assert (keys.log_key(g1, i1) < keys.log_key(g2, i2)) == ((g1, i1) < (g2, i2))
    assert keys.log_index(keys.log_key(g1, i1)) == i1


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(GROUP, U64, U64, U64)
def test_session_keys_roundtrip(g: int, client: int, inc: int, seq: int) -> None:
    state, outcome = keys.session_key(g, client, inc), keys.outcome_key(g, client, inc, seq)
    end = keys.session_end(g, client, inc)
    assert keys.session_clock_key(g) < state < outcome < end <= keys.group_end(g)
    assert keys.session_id(state) == keys.session_id(outcome) == (client, inc)


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(GROUP, st.binary(max_size=10))
def test_node_meta_keys_never_collide_with_group_keys(g: int, name: bytes) -> None:
    assert keys.node_meta_key(name)[:1] == b"\xff" != keys.meta_key(g, b"h")[:1]


def test_group_ids_are_checked() -> None:
    with pytest.raises(ValueError, match="group id"):
        keys.check_group(-1)
    with pytest.raises(ValueError, match="group id"):
        keys.check_group(2**63)


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(GROUP, entries)
def test_entry_roundtrip(g: int, e: Entry) -> None:
    assert codec.decode_entry(g, e.index, codec.encode_entry(g, e)) == e


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(GROUP, entries, st.data())
def test_any_flipped_entry_byte_is_detected(g: int, e: Entry, data: st.DataObject) -> None:
    raw = bytearray(codec.encode_entry(g, e))
    at = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[at] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(CorruptionError) as err:
        codec.decode_entry(g, e.index, bytes(raw))
    assert err.value.group == g and err.value.index == e.index
    assert f"group {g} index {e.index}" in str(err.value)


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(GROUP, entries)
def test_entry_under_the_wrong_index_or_group_is_detected(g: int, e: Entry) -> None:
    raw = codec.encode_entry(g, e)
    with pytest.raises(CorruptionError):
        codec.decode_entry(g, e.index ^ 1, raw)
    with pytest.raises(CorruptionError):
        codec.decode_entry(g ^ 1, e.index, raw)


def test_short_entry_is_corruption() -> None:
    with pytest.raises(CorruptionError, match="12 bytes"):
        codec.decode_entry(1, 2, b"\x00" * 12)


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(GROUP, st.binary(max_size=30), st.data())
def test_sealed_records_catch_flips(g: int, payload: bytes, data: st.DataObject) -> None:
    raw = bytearray(codec.seal(g, payload))
    assert codec.unseal(g, bytes(raw), "x") == payload
    at = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[at] ^= 0x40
    with pytest.raises(CorruptionError, match="x checksum"):
        codec.unseal(g, bytes(raw), "x")


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(st.builds(HardState, term=U64, vote=U64, commit=U64))
def test_hard_state_roundtrip(hs: HardState) -> None:
    assert codec.decode_hard_state(codec.encode_hard_state(hs)) == hs


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(st.builds(ConfState, voters=ids, learners=ids, voters_outgoing=ids), U64, U64)
def test_conf_state_and_base_roundtrip(cs: ConfState, index: int, term: int) -> None:
    assert codec.decode_conf_state(codec.encode_conf_state(cs)) == cs
    meta = SnapshotMetadata(index=index, term=term, conf_state=cs)
    assert codec.decode_base(codec.encode_base(meta)) == meta


kv_pairs = st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=30)), max_size=5)
session_rows = st.lists(st.tuples(st.binary(max_size=24), st.binary(max_size=30)), max_size=5)


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(U64, kv_pairs, session_rows)
def test_image_roundtrip(index: int, kv: list[tuple[bytes, bytes]], s: list) -> None:  # type: ignore[type-arg]
    image = read_image(3, index, write_image(index, kv, s))
    assert (image.index, image.kv, image.sessions) == (index, kv, s)


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(U64, kv_pairs, session_rows, st.data())
def test_damaged_image_is_corruption(
    index: int,
    kv: list[tuple[bytes, bytes]],
    s: list,
    data: st.DataObject,  # type: ignore[type-arg]
) -> None:
    raw = bytearray(write_image(index, kv, s))
    at = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[at] ^= 0x01
    with pytest.raises(CorruptionError, match=f"group 3 index {index}"):
        read_image(3, index, bytes(raw))
    with pytest.raises(CorruptionError):
        read_image(3, index, bytes(raw[:at]))


many_kv = st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=90)), max_size=30)


@settings(deadline=None)  # a loaded CI machine must not fail a correct example
@given(U64, many_kv, session_rows, st.integers(min_value=1, max_value=64), st.data())
def test_image_buffering_keeps_every_byte(
    index: int,
    kv: list[tuple[bytes, bytes]],
    s: list,  # type: ignore[type-arg]
    buffer: int,
    data: st.DataObject,
) -> None:
    """The writer gathers and the reader reads BUFFER bytes at a time: with a tiny
    buffer every frame crosses a refill, and the image must still read back whole,
    equal to the one written a record at a time, and any damage must still be found."""
    with mock.patch.object(snapshot, "BUFFER", buffer):
        raw = write_image(index, kv, s)
        one = io.BytesIO()
        w = snapshot.ImageWriter(one, index)
        for k, v in kv:
            w.kv(k, v)
        for k, v in s:
            w.session(k, v)
        w.finish()
        assert one.getvalue() == raw
        image = read_image(3, index, raw)
        assert (image.index, image.kv, image.sessions) == (index, kv, s)
        bad = bytearray(raw)
        at = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        bad[at] ^= 0x80
        with pytest.raises(CorruptionError):
            read_image(3, index, bytes(bad))
        with pytest.raises(CorruptionError):
            read_image(3, index, raw + b"x")


def test_image_for_another_index_is_rejected() -> None:
    with pytest.raises(CorruptionError, match="header"):
        read_image(1, 8, write_image(7, [], []))
