"""The state machine image carried in Snapshot.data: a group's kv and session tables.

Invariant: an image holds exactly the records of one group at one applied index (for a
shard: the user keys of its range only, a range snapshot), and
``read_image(write_image(...))`` gives them back or raises CorruptionError (its CRC32
covers the whole image). Records are copied as stored, without re-encoding.

    magic "KVS4" | u64 index | u32 n_kv | n_kv x (u32 klen, key, u32 rlen, kv record)
                 | u32 n_sessions | n_sessions x (u32 klen, key, u32 rlen, session record)
                 | u32 len, shard descriptor (0: none) | u32 len, meta group state (0: none)
                 | u32 len, member addresses (codec.encode_members)
                 | u32 crc

Session keys are the sessions table's keys without the group prefix (tables.py).
"KVS1" (no descriptor and meta sections), "KVS2" and "KVS3" (no member addresses)
images are still read; KVS1/KVS2 sessions, of the layout before incarnations, are
dropped (see env._upgrade_sessions).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from kvstore.storage.errors import CorruptionError

MAGIC = b"KVS4"
_OLD = (b"KVS1", b"KVS2", b"KVS3")
_NEW_SESSIONS = (MAGIC, b"KVS3")
_HEAD = struct.Struct("<4sQ")
_U32 = struct.Struct("<I")
_OLD_SESSION = struct.Struct("<QQI")


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    index: int
    kv: list[tuple[bytes, bytes]]
    """(user key, kv record) in key order."""
    sessions: list[tuple[bytes, bytes]]
    """(session key, record) in key order."""
    shard: bytes = b""
    """The group's encoded shard descriptor at ``index`` (b"": an unsharded group)."""
    meta_state: bytes = b""
    """The meta group's encoded state (b"" for other groups)."""
    members: bytes = b""
    """The group's member address book (codec.encode_members)."""


def write_image(
    index: int,
    kv: Iterable[tuple[bytes, bytes]],
    sessions: Iterable[tuple[bytes, bytes]],
    shard: bytes = b"",
    meta_state: bytes = b"",
    members: bytes = b"",
) -> bytes:
    parts: list[bytes] = [_HEAD.pack(MAGIC, index)]
    for pairs in (kv, sessions):
        n_at = len(parts)
        parts.append(b"")
        n = 0
        for key, record in pairs:
            parts += (_U32.pack(len(key)), key, _U32.pack(len(record)), record)
            n += 1
        parts[n_at] = _U32.pack(n)
    parts += (_U32.pack(len(shard)), shard, _U32.pack(len(meta_state)), meta_state)
    parts += (_U32.pack(len(members)), members)
    body = b"".join(parts)
    return body + _U32.pack(zlib.crc32(body))


def read_image(group: int, index: int, data: bytes) -> Image:
    """Decode the image of a snapshot at ``index``; raises CorruptionError if it is not one."""
    if len(data) < _HEAD.size + 12:
        raise CorruptionError(f"snapshot image of {len(data)} bytes", group=group, index=index)
    body = memoryview(data)[:-4]
    if zlib.crc32(body) != _U32.unpack_from(data, len(body))[0]:
        raise CorruptionError("snapshot image checksum mismatch", group=group, index=index)
    try:
        magic, at = _HEAD.unpack_from(body, 0)
        if (magic != MAGIC and magic not in _OLD) or at != index:
            raise ValueError(f"image header {magic!r} at {at}")
        pos = _HEAD.size
        kv, pos = _pairs(body, pos)
        if magic in _NEW_SESSIONS:
            sessions, pos = _pairs(body, pos)
        else:
            sessions, pos = [], _skip_old_sessions(body, pos)
        shard = meta_state = members = b""
        if magic != b"KVS1":
            shard, pos = _take(body, pos)
            meta_state, pos = _take(body, pos)
        if magic == MAGIC:
            members, pos = _take(body, pos)
        if pos != len(body):
            raise ValueError(f"{len(body) - pos} trailing bytes")
    except (struct.error, ValueError) as e:
        raise CorruptionError(f"malformed snapshot image: {e}", group=group, index=index) from e
    return Image(
        index=index,
        kv=kv,
        sessions=sessions,
        shard=shard,
        meta_state=meta_state,
        members=members,
    )


def _pairs(body: memoryview, pos: int) -> tuple[list[tuple[bytes, bytes]], int]:
    (n,) = _U32.unpack_from(body, pos)
    pos += 4
    out: list[tuple[bytes, bytes]] = []
    for _ in range(n):
        key, pos = _take(body, pos)
        record, pos = _take(body, pos)
        out.append((key, record))
    return out, pos


def _skip_old_sessions(body: memoryview, pos: int) -> int:
    (n,) = _U32.unpack_from(body, pos)
    pos += 4
    for _ in range(n):
        rlen = _OLD_SESSION.unpack_from(body, pos)[2]
        pos += _OLD_SESSION.size + rlen
        if pos > len(body):
            raise ValueError("session record runs past the end")
    return pos


def _take(body: memoryview, pos: int) -> tuple[bytes, int]:
    (n,) = _U32.unpack_from(body, pos)
    pos += 4
    if pos + n > len(body):
        raise ValueError("field runs past the end")
    return bytes(body[pos : pos + n]), pos + n
