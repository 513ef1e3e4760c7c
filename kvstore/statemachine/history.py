"""History events: what one applied change of a key was, and their stored form.

Rule: ``decode_event(encode_event(e)) == e``; malformed input raises ValueError.
Performs no I/O. Which changes become events is the storage's rule
(kvstore.storage.history.RecordingTables: every put and delete of a user key while an
entry applies, whatever command made it, in apply order).

An event keeps the key before the change (``prev``) as well as after it, so the value
of a key at revision N is the ``prev`` of its first event after N, or its current value
when it has none (kvstore.storage.history): a get at a past revision needs no per-key
index and compaction drops whole revisions with nothing to keep.

    u8 kind | u16 key length | key | u32 prev length (0xFFFFFFFF: absent) | prev record
            | put: kv record (statemachine/records.py, to the end)
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from kvstore.statemachine.records import decode_kv, encode_kv
from kvstore.statemachine.types import KeyValue

_HEAD = struct.Struct("<BH")
_LEN = struct.Struct("<I")
_ABSENT = 0xFFFFFFFF


class EventKind(enum.IntEnum):
    PUT = 0
    DELETE = 1


@dataclass(frozen=True, slots=True)
class Event:
    revision: int
    kind: EventKind
    key: bytes
    kv: KeyValue | None
    """After a put; None after a delete."""
    prev: KeyValue | None
    """The key before the change (None: it did not exist, a put that created it)."""


def encode_event(e: Event) -> bytes:
    parts = [_HEAD.pack(int(e.kind), len(e.key)), e.key]
    if e.prev is None:
        parts.append(_LEN.pack(_ABSENT))
    else:
        prev = encode_kv(e.prev)
        parts += (_LEN.pack(len(prev)), prev)
    if e.kind == EventKind.PUT:
        assert e.kv is not None
        parts.append(encode_kv(e.kv))
    return b"".join(parts)


def event_key(record: bytes) -> bytes:
    """The key of a stored event, without decoding the rest."""
    if len(record) < _HEAD.size:
        raise ValueError(f"event record of {len(record)} bytes")
    (n,) = struct.unpack_from("<H", record, 1)
    return record[_HEAD.size : _HEAD.size + n]


def decode_event(revision: int, record: bytes) -> Event:
    try:
        kind_n, klen = _HEAD.unpack_from(record, 0)
        kind = EventKind(kind_n)
        pos = _HEAD.size + klen
        key = record[_HEAD.size : pos]
        if len(key) != klen:
            raise ValueError("key runs past the end")
        (plen,) = _LEN.unpack_from(record, pos)
        pos += _LEN.size
        prev = None
        if plen != _ABSENT:
            if pos + plen > len(record):
                raise ValueError("prev runs past the end")
            prev = decode_kv(key, record[pos : pos + plen])
            pos += plen
        kv = None
        if kind == EventKind.PUT:
            kv = decode_kv(key, record[pos:])
        elif pos != len(record):
            raise ValueError(f"{len(record) - pos} trailing bytes after a delete")
    except struct.error as e:
        raise ValueError(f"event record: {e}") from e
    return Event(revision, kind, key, kv, prev)
