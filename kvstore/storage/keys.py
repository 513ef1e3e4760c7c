"""Key layout of the LMDB sub-databases. Performs no I/O.

Invariant: every per-group key starts with the group id as 8 big-endian bytes, so one
environment hosts many groups, a group's keys are one contiguous range, and within it
big-endian indexes sort in their natural order. User data is NOT per group: one key space
per node (TiKV's layout), each user key under DATA_PREFIX + its own bytes, and a group
owns the range its shard descriptor says, so a split moves no data.

    log       group u64 | index u64              -> checksummed entry (codec.encode_entry)
    meta      group u64 | tag (1 byte)           -> sealed hard state / conf state / applied
                                                    / shard descriptor / meta group state
                                                    / member addresses
              0xFF | name                        -> node-level metadata (cluster id, ...)
              0xFF | "tombstone" | group u64     -> sealed tombstone of a destroyed replica
                                                    (tombstone.py; outlives the group's keys)
    snapshot  group u64                          -> sealed log base (SnapshotMetadata)
    kv        DATA_PREFIX | user key             -> KeyValue record   (key <= KEY_INLINE bytes)
              DATA_PREFIX | key[:KEY_INLINE] | blake2b-128(key)
                                                 -> u32 n | key[KEY_INLINE:] | record (longer)
    sessions  group u64                          -> log clock, applied time (records.encode_clock)
              group u64 | client u64 | incarnation u64            -> session state
              group u64 | client u64 | incarnation u64 | seq u64  -> stored outcome

Group ids are below 2**63 so a group key never starts with the node-level 0xFF byte. The
one-byte data prefix keeps the empty key storable (LMDB refuses empty keys).

Long keys (LMDB keys stop at 511 bytes; users may send up to MAX_KEY_SIZE): a key longer
than KEY_INLINE is stored under its first KEY_INLINE bytes and a 128-bit hash of all of
it, the rest of the key in front of the record. memcmp order of the stored keys is then
the order of the user keys, except among long keys that share their first KEY_INLINE
bytes (a "bucket": stored keys of LONG_KV_KEY bytes with one KEY_INLINE prefix), which sit
together, after the short key equal to their prefix and before anything greater, in hash
order: readers sort a bucket by its full keys (tables.py). Why this and not an ordered
chunked encoding: LMDB compares keys with memcmp and py-lmdb cannot set a comparator, so
no order-preserving map of longer keys into 511 bytes exists; chunking would need a key
tree over several tables for every read, while this costs nothing for keys up to
KEY_INLINE bytes (all of today's data) and a sort only where long keys share 494 bytes.
"""

from __future__ import annotations

import hashlib
import struct

MAX_GROUP = (1 << 63) - 1
_U64 = struct.Struct(">Q")
_U64x2 = struct.Struct(">QQ")
_U64x3 = struct.Struct(">QQQ")

TAG_HARD_STATE = b"h"
TAG_CONF_STATE = b"c"
TAG_APPLIED = b"a"
TAG_SHARD = b"s"
TAG_META_STATE = b"m"
TAG_MEMBERS = b"p"
NODE_META_PREFIX = b"\xff"
DATA_PREFIX = b"d"
DATA_END = b"e"
"""The first kv-table key after every user key."""
TOMBSTONE = b"tombstone"
LAYOUT = b"kv_layout"
LAYOUT_V2 = b"2"
"""Node meta: the kv table holds DATA_PREFIX | user key (v1 held group u64 | user key)."""


def check_group(group: int) -> int:
    if not 0 <= group <= MAX_GROUP:
        raise ValueError(f"group id must be in 0..2**63-1, got {group}")
    return group


def group_prefix(group: int) -> bytes:
    return _U64.pack(group)


def group_end(group: int) -> bytes:
    """The first key after every key of ``group`` (an exclusive range end)."""
    return _U64.pack(group + 1)


def log_key(group: int, index: int) -> bytes:
    return _U64x2.pack(group, index)


def log_index(key: bytes) -> int:
    return _U64x2.unpack(key)[1]  # type: ignore[no-any-return]


def meta_key(group: int, tag: bytes) -> bytes:
    return _U64.pack(group) + tag


def node_meta_key(name: bytes) -> bytes:
    return NODE_META_PREFIX + name


def tombstone_key(group: int) -> bytes:
    """Node-level, not under the group's prefix: a destroy deletes that whole range, and
    a tombstone must not make the group look hosted (NodeStorage.groups)."""
    return node_meta_key(TOMBSTONE) + _U64.pack(group)


KEY_INLINE = 494
"""User key bytes kept in the stored key; a longer key adds a 16-byte hash (511 in all)."""
LONG_KV_KEY = len(DATA_PREFIX) + KEY_INLINE + 16
_U32 = struct.Struct("<I")


def kv_key(key: bytes) -> bytes:
    """The kv-table key of a user key (see "Long keys" above)."""
    if len(key) <= KEY_INLINE:
        return DATA_PREFIX + key
    return DATA_PREFIX + key[:KEY_INLINE] + hashlib.blake2b(key, digest_size=16).digest()


def kv_seek(key: bytes) -> bytes:
    """A kv-table key at or before the stored key of every user key >= ``key``."""
    return DATA_PREFIX + key[:KEY_INLINE]


def is_long(stored: bytes) -> bool:
    return len(stored) == LONG_KV_KEY


def bucket(stored: bytes) -> bytes:
    """The prefix shared by a long stored key's bucket."""
    return stored[: len(DATA_PREFIX) + KEY_INLINE]


def long_value(key: bytes, record: bytes) -> bytes:
    """What a long key stores: the rest of the key, then its record."""
    tail = key[KEY_INLINE:]
    return _U32.pack(len(tail)) + tail + record


def split_long_value(stored: bytes, value: bytes) -> tuple[bytes, bytes]:
    """(user key, record) of a long key's stored key and value; ValueError if damaged."""
    if len(value) < 4:
        raise ValueError("long key record shorter than its length field")
    (n,) = _U32.unpack_from(value)
    if 4 + n > len(value):
        raise ValueError(f"long key tail of {n} bytes runs past the record")
    head = bytes(stored[len(DATA_PREFIX) : len(DATA_PREFIX) + KEY_INLINE])
    return head + bytes(value[4 : 4 + n]), bytes(value[4 + n :])


def kv_end(end: bytes) -> bytes:
    """The kv-table key bounding a user range that ends at ``end`` (b"": unbounded): every
    user key below ``end`` is stored below it, every other at or above it. For an ``end``
    longer than KEY_INLINE this holds except inside ``end``'s own bucket (and the short
    key equal to its prefix), which readers filter by full key."""
    return DATA_PREFIX + end[:KEY_INLINE] if end else DATA_END


_U64x4 = struct.Struct(">QQQQ")
_SESSION_IDS = 1 << 128


def session_clock_key(group: int) -> bytes:
    return _U64.pack(group)


def session_key(group: int, client_id: int, incarnation: int) -> bytes:
    """The session's state; its outcomes' keys extend it, so they sort right after it."""
    return _U64x3.pack(group, client_id, incarnation)


def session_end(group: int, client_id: int, incarnation: int) -> bytes:
    """The first key after every key of the session (an exclusive range end)."""
    nxt = (client_id << 64 | incarnation) + 1
    if nxt == _SESSION_IDS:
        return group_end(group)
    return _U64x3.pack(group, nxt >> 64, nxt & ((1 << 64) - 1))


def outcome_key(group: int, client_id: int, incarnation: int, seq: int) -> bytes:
    return _U64x4.pack(group, client_id, incarnation, seq)


def session_id(key: bytes) -> tuple[int, int]:
    """(client_id, incarnation) of a session or outcome key."""
    _, client_id, incarnation = _U64x3.unpack_from(key)
    return client_id, incarnation
