"""Stored forms of KeyValue (the kv table's value), a session's stored outcome and
state, and the log clock.

Rule: ``decode_*(encode_*(x)) == x`` (for outcomes: of what a session keeps, see
``apply.stored``); malformed input raises ValueError. Performs no I/O. The key of a
KeyValue is not in its record: the table key already holds it.
"""

from __future__ import annotations

import struct

from kvstore.statemachine.apply import SessionState
from kvstore.statemachine.types import ApplyError, ApplyResult, KeyValue

_KV = struct.Struct("<QQQ")  # version, create_revision, mod_revision; then the value
_RESULT = struct.Struct("<QBB")  # revision, ok, error
_SESSION = struct.Struct("<QQQ")  # last seq, last index, last time (ms)
_U64 = struct.Struct("<Q")


def encode_kv(kv: KeyValue) -> bytes:
    return _KV.pack(kv.version, kv.create_revision, kv.mod_revision) + kv.value


def decode_kv(key: bytes, record: bytes) -> KeyValue:
    if len(record) < _KV.size:
        raise ValueError(f"kv record of {len(record)} bytes is shorter than {_KV.size}")
    version, create, mod = _KV.unpack_from(record, 0)
    return KeyValue(key, record[_KV.size :], version, create, mod)


def encode_result(r: ApplyResult) -> bytes:
    """A session's stored outcome: revision, success, error. Values are not kept (and
    ``index`` is the revision: a write's revision is its entry's index)."""
    return _RESULT.pack(r.revision, r.ok, int(r.error))


def decode_result(buf: bytes) -> ApplyResult:
    if len(buf) != _RESULT.size:
        raise ValueError(f"result record of {len(buf)} bytes, want {_RESULT.size}")
    revision, ok, error = _RESULT.unpack(buf)
    if ok > 1:
        raise ValueError(f"result record with ok={ok}")
    return ApplyResult(revision, revision, bool(ok), None, None, ApplyError(error))


def encode_session(s: SessionState) -> bytes:
    return _SESSION.pack(s.last_seq, s.last_index, s.last_time_ms)


def decode_session(buf: bytes) -> SessionState:
    if len(buf) != _SESSION.size:
        raise ValueError(f"session record of {len(buf)} bytes, want {_SESSION.size}")
    return SessionState(*_SESSION.unpack(buf))


def encode_u64(n: int) -> bytes:
    return _U64.pack(n)


def decode_u64(buf: bytes) -> int:
    if len(buf) != _U64.size:
        raise ValueError(f"u64 record of {len(buf)} bytes")
    n: int = _U64.unpack(buf)[0]
    return n


def encode_clock(time_ms: int, applied_time: int) -> bytes:
    """A group's log clock record: log time in ms, then its applied time (apply.py)."""
    return _U64.pack(time_ms) + _U64.pack(applied_time)


def decode_clock(buf: bytes) -> tuple[int, int]:
    """(log time ms, applied time); a record from before applied times has only the
    first (applied time 0: the next entry's time is its stamp)."""
    if len(buf) == _U64.size:
        return decode_u64(buf), 0
    if len(buf) != 2 * _U64.size:
        raise ValueError(f"clock record of {len(buf)} bytes")
    return _U64.unpack_from(buf, 0)[0], _U64.unpack_from(buf, 8)[0]
