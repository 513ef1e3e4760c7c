"""The state machine image carried in Snapshot.data: a group's kv and session tables.

Invariant: an image holds exactly the records of one group at one applied index, and
``read_image(write_image(...))`` gives them back or raises CorruptionError (its CRC32
covers the whole image). Records are copied as stored, without re-encoding.

    magic "KVS1" | u64 index | u32 n_kv | n_kv x (u32 klen, key, u32 rlen, kv record)
                 | u32 n_sessions | n_sessions x (u64 client, u64 seq, u32 rlen, result record)
                 | u32 crc
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from kvstore.storage.errors import CorruptionError

MAGIC = b"KVS1"
_HEAD = struct.Struct("<4sQ")
_U32 = struct.Struct("<I")
_SESSION = struct.Struct("<QQI")


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    index: int
    kv: list[tuple[bytes, bytes]]
    """(user key, kv record) in key order."""
    sessions: list[tuple[int, int, bytes]]
    """(client id, seq, result record) in (client, seq) order."""


def write_image(
    index: int, kv: Iterable[tuple[bytes, bytes]], sessions: Iterable[tuple[int, int, bytes]]
) -> bytes:
    parts: list[bytes] = [_HEAD.pack(MAGIC, index)]
    n_at = len(parts)
    parts.append(b"")
    n = 0
    for key, record in kv:
        parts += (_U32.pack(len(key)), key, _U32.pack(len(record)), record)
        n += 1
    parts[n_at] = _U32.pack(n)
    s_at = len(parts)
    parts.append(b"")
    n = 0
    for client, seq, record in sessions:
        parts += (_SESSION.pack(client, seq, len(record)), record)
        n += 1
    parts[s_at] = _U32.pack(n)
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
        if magic != MAGIC or at != index:
            raise ValueError(f"image header {magic!r} at {at}")
        pos = _HEAD.size
        (n,) = _U32.unpack_from(body, pos)
        pos += 4
        kv: list[tuple[bytes, bytes]] = []
        for _ in range(n):
            key, pos = _take(body, pos)
            record, pos = _take(body, pos)
            kv.append((key, record))
        (n,) = _U32.unpack_from(body, pos)
        pos += 4
        sessions: list[tuple[int, int, bytes]] = []
        for _ in range(n):
            client, seq, rlen = _SESSION.unpack_from(body, pos)
            pos += _SESSION.size
            record, pos = bytes(body[pos : pos + rlen]), pos + rlen
            sessions.append((client, seq, record))
        if pos != len(body):
            raise ValueError(f"{len(body) - pos} trailing bytes")
    except (struct.error, ValueError) as e:
        raise CorruptionError(f"malformed snapshot image: {e}", group=group, index=index) from e
    return Image(index=index, kv=kv, sessions=sessions)


def _take(body: memoryview, pos: int) -> tuple[bytes, int]:
    (n,) = _U32.unpack_from(body, pos)
    pos += 4
    if pos + n > len(body):
        raise ValueError("field runs past the end")
    return bytes(body[pos : pos + n]), pos + n
