"""Client commands and their batch codec; one log entry's data is one encoded batch.

Rule: ``decode_batch(encode_batch(cs)) == cs`` for every valid batch, and any other input
raises BatchDecodeError (a ValueError) rather than a struct or index error. Performs no I/O.

Layout (little-endian): ``u8 version=3, u32 count, u64 time_ms, u64 stamp``, then per command
``u8 op, u8 flags, u64 client_id, u64 incarnation, u64 seq, u32 key_len, key`` followed by
Put: ``u32 len, value [u64 lease]``; Delete: nothing; Cas: in flag order
``[u32 len, new_value] [u32 len, expected_value] [u64 expected_version] [u64 lease]``;
the lease commands (statemachine/leases.py; empty key): ``u64 lease, u64 argument`` (the
TTL of a grant, the remaining TTL of a checkpoint, the touched index an expiry names,
else 0); a checkpoint with flag 1 adds ``u64 touched`` (the keep-alive state it was
measured from: a keep-alive ordered first voids it).
``time_ms`` is the log time the proposing leader stamps (0 = none; kvstore/node/logclock.py:
the log's time when its term began plus its monotonic time since, never its wall clock):
the state machine's only notion of time (session expiry), the same on every replica
because it travels in the log. ``stamp`` is
the leader's hybrid logical clock (kvstore/node/hlc.py; 0 = none): what causal tokens
compare (docs/sharding.md). A batch of no commands is a valid entry: a leader proposes
one to move its group's applied time when a causal read waits on an idle group.
Versions 1 (no time, no incarnation) and 2 (no stamp) are still decoded: logs written
before them exist.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from kvstore.statemachine.leases import (
    LeaseCheckpoint,
    LeaseCommand,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
)

_VERSION = 3
_HEAD_V1 = struct.Struct("<BI")
_CMD_V1 = struct.Struct("<BBQQI")
_HEAD_V2 = struct.Struct("<BIQ")
_HEAD = struct.Struct("<BIQQ")
_CMD = struct.Struct("<BBQQQI")
_LEN = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_LEASE_ARGS = struct.Struct("<QQ")
_CHECKPOINT_IF_TOUCHED = 1
"""Flag of a LeaseCheckpoint that names the ``touched`` it was decided from (a u64 more)."""

_OP_PUT = 1
_OP_DELETE = 2
_OP_CAS = 3
_OP_LEASE_GRANT = 4
_OP_LEASE_KEEP_ALIVE = 5
_OP_LEASE_REVOKE = 6
_OP_LEASE_CHECKPOINT = 7
_LEASE_OPS: dict[type, int] = {
    LeaseGrant: _OP_LEASE_GRANT,
    LeaseKeepAlive: _OP_LEASE_KEEP_ALIVE,
    LeaseRevoke: _OP_LEASE_REVOKE,
    LeaseCheckpoint: _OP_LEASE_CHECKPOINT,
}

_HAS_NEW = 1
_HAS_EXPECTED_VALUE = 2
_HAS_EXPECTED_VERSION = 4
_HAS_LEASE = 8
_PUT_HAS_LEASE = 1


class BatchDecodeError(ValueError):
    """The bytes are not a batch this codec produced."""


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    client_id: int = 0
    """With ``incarnation``, the session for exactly-once; 0 = no session (a retry may
    apply twice)."""
    seq: int = 0
    incarnation: int = 0
    """Picked afresh by each client process, so a restarted client is a new session."""
    lease: int = 0
    """The lease the key is attached to from this write on (0: none)."""


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes
    client_id: int = 0
    seq: int = 0
    incarnation: int = 0


@dataclass(frozen=True, slots=True)
class Cas:
    """Compare-and-swap: if every given expectation holds, write ``new_value``.

    ``expected_version=0`` means "the key is absent"; ``expected_value`` compares the
    current value (an absent key never matches it). ``new_value=None`` deletes on success.
    At least one expectation is required (an unconditional write is a Put).
    """

    key: bytes
    new_value: bytes | None
    expected_value: bytes | None = None
    expected_version: int | None = None
    client_id: int = 0
    seq: int = 0
    incarnation: int = 0
    lease: int = 0
    """On success, the lease a written key is attached to (0: none)."""

    def __post_init__(self) -> None:
        if self.expected_value is None and self.expected_version is None:
            raise ValueError("Cas needs expected_value or expected_version (0 = key absent)")
        if self.expected_version is not None and self.expected_version < 0:
            raise ValueError(f"expected_version must be >= 0, got {self.expected_version}")


KeyCommand = Put | Delete | Cas
Command = Put | Delete | Cas | LeaseCommand


def adds_data(cmd: Command) -> bool:
    """Whether the command may grow the store (what a nearly full store refuses)."""
    return isinstance(cmd, Put | LeaseGrant) or (isinstance(cmd, Cas) and cmd.new_value is not None)


@dataclass(frozen=True, slots=True)
class Batch:
    """One entry's decoded data."""

    commands: list[Command]
    time_ms: int = 0
    """The proposer's log time in ms (kvstore/node/logclock.py); 0 = not stamped."""
    stamp: int = 0
    """The proposer's hybrid logical clock (kvstore/node/hlc.py); 0 = not stamped."""


def encode_batch(commands: Sequence[Command], time_ms: int = 0, stamp: int = 0) -> bytes:
    """Encode commands (in order) as one entry's data, stamped with ``time_ms`` and the
    hybrid clock ``stamp``. Raises ValueError on an id, seq, version, time or stamp
    outside 0..2**64-1."""
    try:
        parts: list[bytes] = [_HEAD.pack(_VERSION, len(commands), time_ms, stamp)]
        for c in commands:
            if isinstance(c, Put):
                flags = _PUT_HAS_LEASE if c.lease else 0
                parts.append(
                    _CMD.pack(_OP_PUT, flags, c.client_id, c.incarnation, c.seq, len(c.key))
                )
                parts.append(c.key)
                parts.append(_LEN.pack(len(c.value)))
                parts.append(c.value)
                if c.lease:
                    parts.append(_U64.pack(c.lease))
            elif isinstance(c, Delete):
                parts.append(
                    _CMD.pack(_OP_DELETE, 0, c.client_id, c.incarnation, c.seq, len(c.key))
                )
                parts.append(c.key)
            elif isinstance(c, Cas):
                flags = (
                    (_HAS_NEW if c.new_value is not None else 0)
                    | (_HAS_EXPECTED_VALUE if c.expected_value is not None else 0)
                    | (_HAS_EXPECTED_VERSION if c.expected_version is not None else 0)
                    | (_HAS_LEASE if c.lease else 0)
                )
                parts.append(
                    _CMD.pack(_OP_CAS, flags, c.client_id, c.incarnation, c.seq, len(c.key))
                )
                parts.append(c.key)
                if c.new_value is not None:
                    parts.append(_LEN.pack(len(c.new_value)))
                    parts.append(c.new_value)
                if c.expected_value is not None:
                    parts.append(_LEN.pack(len(c.expected_value)))
                    parts.append(c.expected_value)
                if c.expected_version is not None:
                    parts.append(_U64.pack(c.expected_version))
                if c.lease:
                    parts.append(_U64.pack(c.lease))
            elif type(c) in _LEASE_OPS:
                arg = 0
                if isinstance(c, LeaseGrant):
                    arg = c.ttl_ms
                elif isinstance(c, LeaseCheckpoint):
                    arg = c.remaining_ms
                elif isinstance(c, LeaseRevoke):
                    arg = c.if_touched
                op = _LEASE_OPS[type(c)]
                touched = c.if_touched if isinstance(c, LeaseCheckpoint) else 0
                flags = _CHECKPOINT_IF_TOUCHED if touched else 0
                parts.append(_CMD.pack(op, flags, c.client_id, c.incarnation, c.seq, 0))
                parts.append(_LEASE_ARGS.pack(c.lease, arg))
                if touched:
                    parts.append(_U64.pack(touched))
            else:
                raise TypeError(f"not a command: {c!r}")
    except struct.error as e:
        raise ValueError(f"command field out of range: {e}") from e
    return b"".join(parts)


def decode_batch(data: bytes) -> list[Command]:
    """Decode one entry's commands. Raises BatchDecodeError on anything malformed."""
    return decode_entry(data).commands


def decode_entry(data: bytes) -> Batch:
    """Decode one entry's data. Raises BatchDecodeError on anything malformed."""
    try:
        return _decode(memoryview(data))
    except BatchDecodeError:
        raise
    except (struct.error, ValueError) as e:
        raise BatchDecodeError(f"malformed batch: {e}") from e


def entry_time_ms(data: bytes) -> int:
    """The log time (``time_ms``) of an encoded batch without decoding its commands (0:
    none, or not a batch)."""
    if len(data) >= _HEAD.size and data[0] == _VERSION:
        t: int = _HEAD.unpack_from(data, 0)[2]
        return t
    if len(data) >= _HEAD_V2.size and data[0] == 2:
        t2: int = _HEAD_V2.unpack_from(data, 0)[2]
        return t2
    return 0


def entry_stamp(data: bytes) -> int:
    """The hybrid clock stamp of an encoded batch without decoding its commands (0: none,
    or not a batch)."""
    if len(data) >= _HEAD.size and data[0] == _VERSION:
        stamp: int = _HEAD.unpack_from(data, 0)[3]
        return stamp
    return 0


def _take(mv: memoryview, pos: int) -> tuple[bytes, int]:
    (n,) = _LEN.unpack_from(mv, pos)
    pos += 4
    end = pos + n
    if end > len(mv):
        raise BatchDecodeError(f"field of {n} bytes runs past the end at {pos}")
    return bytes(mv[pos:end]), end


def _decode(mv: memoryview) -> Batch:
    version = mv[0] if len(mv) else 0
    stamp = 0
    if version == _VERSION:
        _, count, time_ms, stamp = _HEAD.unpack_from(mv, 0)
        pos, cmd_size = _HEAD.size, _CMD.size
    elif version == 2:
        _, count, time_ms = _HEAD_V2.unpack_from(mv, 0)
        pos, cmd_size = _HEAD_V2.size, _CMD.size
    elif version == 1:
        _, count = _HEAD_V1.unpack_from(mv, 0)
        time_ms, pos, cmd_size = 0, _HEAD_V1.size, _CMD_V1.size
    else:
        raise BatchDecodeError(f"unknown batch version {version}")
    # Each command takes at least cmd_size bytes: reject absurd counts before looping.
    if count * cmd_size > len(mv):
        raise BatchDecodeError(f"count {count} does not fit in {len(mv)} bytes")
    out: list[Command] = []
    incarnation = 0
    for _ in range(count):
        if version != 1:
            op, flags, client_id, incarnation, seq, klen = _CMD.unpack_from(mv, pos)
        else:
            op, flags, client_id, seq, klen = _CMD_V1.unpack_from(mv, pos)
        pos += cmd_size
        kend = pos + klen
        if kend > len(mv):
            raise BatchDecodeError(f"key of {klen} bytes runs past the end at {pos}")
        key = bytes(mv[pos:kend])
        pos = kend
        if op == _OP_PUT and flags & ~_PUT_HAS_LEASE == 0:
            value, pos = _take(mv, pos)
            lease = 0
            if flags & _PUT_HAS_LEASE:
                (lease,) = _U64.unpack_from(mv, pos)
                pos += 8
            out.append(Put(key, value, client_id, seq, incarnation, lease))
        elif op == _OP_DELETE and flags == 0:
            out.append(Delete(key, client_id, seq, incarnation))
        elif op == _OP_CAS and flags & ~15 == 0:
            new_value = expected_value = None
            expected_version = None
            if flags & _HAS_NEW:
                new_value, pos = _take(mv, pos)
            if flags & _HAS_EXPECTED_VALUE:
                expected_value, pos = _take(mv, pos)
            if flags & _HAS_EXPECTED_VERSION:
                (expected_version,) = _U64.unpack_from(mv, pos)
                pos += 8
            lease = 0
            if flags & _HAS_LEASE:
                (lease,) = _U64.unpack_from(mv, pos)
                pos += 8
            out.append(
                Cas(
                    key,
                    new_value,
                    expected_value,
                    expected_version,
                    client_id,
                    seq,
                    incarnation,
                    lease,
                )
            )
        elif (
            _OP_LEASE_GRANT <= op <= _OP_LEASE_CHECKPOINT
            and klen == 0
            and (flags == 0 or (op == _OP_LEASE_CHECKPOINT and flags == _CHECKPOINT_IF_TOUCHED))
        ):
            lease, arg = _LEASE_ARGS.unpack_from(mv, pos)
            pos += _LEASE_ARGS.size
            if flags:
                (touched,) = _U64.unpack_from(mv, pos)
                pos += 8
                if not touched:
                    raise BatchDecodeError(f"lease checkpoint with touched 0 at {pos}")
                out.append(LeaseCheckpoint(lease, arg, client_id, seq, incarnation, touched))
            else:
                out.append(_lease_command(op, lease, arg, client_id, seq, incarnation))
        else:
            raise BatchDecodeError(f"unknown op {op} with flags {flags} at {pos}")
    if pos != len(mv):
        raise BatchDecodeError(f"{len(mv) - pos} trailing bytes after {count} commands")
    return Batch(out, time_ms, stamp)


def _lease_command(
    op: int, lease: int, arg: int, client_id: int, seq: int, incarnation: int
) -> LeaseCommand:
    if op == _OP_LEASE_GRANT:
        return LeaseGrant(lease, arg, client_id, seq, incarnation)
    if op == _OP_LEASE_REVOKE:
        return LeaseRevoke(lease, client_id, seq, incarnation, arg)
    if op == _OP_LEASE_CHECKPOINT:
        return LeaseCheckpoint(lease, arg, client_id, seq, incarnation)
    if arg:
        raise BatchDecodeError(f"lease keep-alive with argument {arg}")
    return LeaseKeepAlive(lease, client_id, seq, incarnation)
