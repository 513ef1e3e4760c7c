"""Keys past LMDB's 511-byte key limit (issue 14): stored under a prefix and a hash
(kvstore/storage/keys.py), they still read back whole and scan, page, bound shard ranges
and get deleted in the order of their full bytes, mixed with short keys."""

from __future__ import annotations

import lmdb
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.statemachine import MAX_KEY_SIZE
from kvstore.statemachine.types import KeyValue
from kvstore.storage import NodeStorage, keys
from kvstore.storage.env import _LONG_KEYS
from kvstore.storage.tables import GroupTables

INLINE = keys.KEY_INLINE
# Two prefixes of exactly KEY_INLINE bytes (buckets), one just below the other, so keys
# around both bucket edges, inside them, and short keys between them are all drawn.
P1 = b"p" * (INLINE - 1) + b"a"
P2 = b"p" * (INLINE - 1) + b"b"
TAILS = st.binary(max_size=3).map(lambda b: b.replace(b"\x00", b"\x01"))
KEY = st.one_of(
    st.builds(lambda p, t, n: (p + t + b"z" * n)[:MAX_KEY_SIZE], st.sampled_from([P1, P2]),
              TAILS, st.sampled_from([0, 1, 600, 3000, MAX_KEY_SIZE])),
    st.builds(lambda p, n: p[:n], st.sampled_from([P1, P2]), st.integers(0, INLINE)),
    st.binary(max_size=8),
)  # fmt: skip


def _put_all(s: NodeStorage, ks: set[bytes]) -> None:
    with s.env.begin(write=True) as txn:
        t = GroupTables(txn, s.dbs, 1)
        for k in ks:
            t.put(KeyValue(k, k[-3:] + b"!", 1, 1, 1))


@settings(max_examples=60, deadline=None)
@given(st.sets(KEY, min_size=1, max_size=25), KEY, KEY, st.integers(0, 6))
def test_scan_and_bounds_follow_full_key_order(
    tmp_path_factory: object, ks: set[bytes], a: bytes, b: bytes, limit: int
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d, NodeStorage(d, map_size=64 << 20) as s:
        _put_all(s, ks)
        lo, hi = min(a, b), max(a, b)
        want = sorted(k for k in ks if lo <= k and (not hi or k < hi))
        with s.env.begin() as txn:
            t = GroupTables(txn, s.dbs, 1)
            for k in ks:  # point reads find every key whole
                got = t.get(k)
                assert got is not None and got.key == k and got.value == k[-3:] + b"!"
            assert t.get(P1 + b"absent" * 100) is None
            assert [kv.key for kv in t.scan(b"")] == sorted(ks)
            assert [kv.key for kv in t.scan(lo, hi)] == want
            assert [kv.key for kv in t.scan(lo, hi, limit)] == want[: limit or None]
            # Paging as clients do: on from just after the last key of each page.
            paged, start, more = [], lo, True
            while more:
                rows, more = t.scan_page(start, hi, 2, 0)
                paged += [kv.key for kv in rows]
                if rows:
                    start = rows[-1].key + b"\x00"
            assert paged == want
            # A shard owning [lo, hi) sees exactly its keys, whatever their length.
            shard = GroupTables(txn, s.dbs, 1, (lo, hi))
            assert [k for k, _ in shard.raw_kv()] == want
        with s.env.begin(write=True) as txn:
            assert GroupTables(txn, s.dbs, 1, (lo, hi)).delete_owned() == len(want)
        with s.env.begin() as txn:
            left = [kv.key for kv in GroupTables(txn, s.dbs, 1).scan(b"")]
        assert left == sorted(set(ks) - set(want))


def test_an_old_directory_with_keys_stored_whole_is_migrated(tmp_path: object) -> None:
    """Keys of 495-510 bytes were stored whole before long keys: opening re-stores them in
    the long form once, and they read and scan as before."""
    import tempfile

    old = [P1 + b"x" * 10, P1 + b"y", P1[:-1], b"q" * 510]
    with tempfile.TemporaryDirectory() as d:
        with NodeStorage(d, map_size=64 << 20) as s:
            pass
        env = lmdb.open(d, max_dbs=16, subdir=True)
        meta, kv = env.open_db(b"meta"), env.open_db(b"kv")
        with env.begin(write=True) as txn:
            txn.delete(keys.node_meta_key(_LONG_KEYS), db=meta)
            for k in old:
                from kvstore.statemachine.records import encode_kv

                txn.put(keys.DATA_PREFIX + k, encode_kv(KeyValue(k, b"v", 1, 1, 1)), db=kv)
        env.close()
        with NodeStorage(d, map_size=64 << 20) as s, s.env.begin() as txn:
            t = GroupTables(txn, s.dbs, 1)
            assert [kv.key for kv in t.scan(b"")] == sorted(old)
            assert all(t.get(k) is not None for k in old)
