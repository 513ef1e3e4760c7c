"""Stored forms of KeyValue (the kv table's value) and ApplyResult (a session's answer).

Rule: ``decode_*(encode_*(x)) == x``; malformed input raises ValueError. Performs no I/O.
The key of a KeyValue is not in its record: the table key already holds it.
"""

from __future__ import annotations

import struct

from kvstore.statemachine.types import ApplyError, ApplyResult, KeyValue

_KV = struct.Struct("<QQQ")  # version, create_revision, mod_revision; then the value
_RESULT = struct.Struct("<QQBBB")  # index, revision, ok, error, presence bits
_KEYLEN = struct.Struct("<I")
_HAS_PREV = 1
_HAS_KV = 2


def encode_kv(kv: KeyValue) -> bytes:
    return _KV.pack(kv.version, kv.create_revision, kv.mod_revision) + kv.value


def decode_kv(key: bytes, record: bytes) -> KeyValue:
    if len(record) < _KV.size:
        raise ValueError(f"kv record of {len(record)} bytes is shorter than {_KV.size}")
    version, create, mod = _KV.unpack_from(record, 0)
    return KeyValue(key, record[_KV.size :], version, create, mod)


def _encode_full_kv(kv: KeyValue) -> bytes:
    body = encode_kv(kv)
    return _KEYLEN.pack(len(kv.key)) + kv.key + _KEYLEN.pack(len(body)) + body


def _decode_full_kv(buf: bytes, pos: int) -> tuple[KeyValue, int]:
    (klen,) = _KEYLEN.unpack_from(buf, pos)
    pos += 4
    key = buf[pos : pos + klen]
    pos += klen
    (blen,) = _KEYLEN.unpack_from(buf, pos)
    pos += 4
    body = buf[pos : pos + blen]
    if len(key) != klen or len(body) != blen:
        raise ValueError("truncated key-value in result record")
    return decode_kv(key, body), pos + blen


def encode_result(r: ApplyResult) -> bytes:
    bits = (_HAS_PREV if r.prev is not None else 0) | (_HAS_KV if r.kv is not None else 0)
    parts = [_RESULT.pack(r.index, r.revision, r.ok, int(r.error), bits)]
    if r.prev is not None:
        parts.append(_encode_full_kv(r.prev))
    if r.kv is not None:
        parts.append(_encode_full_kv(r.kv))
    return b"".join(parts)


def result_index(buf: bytes) -> int:
    """The entry index of a stored result, without decoding the rest."""
    index: int = _RESULT.unpack_from(buf, 0)[0]
    return index


def decode_result(buf: bytes) -> ApplyResult:
    try:
        index, revision, ok, error, bits = _RESULT.unpack_from(buf, 0)
        pos = _RESULT.size
        prev = kv = None
        if bits & _HAS_PREV:
            prev, pos = _decode_full_kv(buf, pos)
        if bits & _HAS_KV:
            kv, pos = _decode_full_kv(buf, pos)
        if pos != len(buf):
            raise ValueError(f"{len(buf) - pos} trailing bytes in result record")
        return ApplyResult(index, revision, bool(ok), prev, kv, ApplyError(error))
    except struct.error as e:
        raise ValueError(f"malformed result record: {e}") from e
