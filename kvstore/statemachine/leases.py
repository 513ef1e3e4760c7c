"""Leases in the state machine: commands, stored record, and how they apply.

Rule: a lease changes only through the log. Grant, keep-alive, checkpoint and revoke are
commands in a group's entries, so every replica holds the same leases and deletes the
same keys at the same index; nothing here reads a clock. WHEN a lease expires is the
leader's decision (kvstore/node/lease_expiry.py), carried out as a LeaseRevoke entry.

What is replicated per lease: its TTL, the remaining TTL as of the last checkpoint
(``remaining_ms``; a grant or keep-alive resets it to the TTL), and ``touched``, the index
of the last grant or keep-alive. A new leader gives every lease ``remaining_ms`` from its
election on: at least what the lease had left (a checkpoint is only ever written below
what remained, and a keep-alive resets it), so a leader change never expires a lease
early, and checkpoints make a lease progress towards expiry across leader changes, so it
is not kept for ever (etcd's lease checkpoints). The leader's expiry names the ``touched``
it saw, so a keep-alive ordered before it in the log (one the leader had not applied yet
when it decided) cancels it.

Keys: a write of a key detaches it from its old lease; a Put or Cas that writes with
``lease=L`` attaches it to L (an unknown L: nothing applies, LEASE_NOT_FOUND). A revoke
deletes the lease and every key attached to it that the group owns, at its entry's
revision.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kvstore.statemachine.types import ApplyError, ApplyResult, KeyValue

MIN_TTL_MS = 1000
"""Shortest TTL: below an election's duration a lease would expire during a failover."""
MAX_TTL_MS = 10 * 365 * 86400 * 1000
"""Longest TTL (ten years)."""
MAX_LEASE_ID = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    lease: int
    ttl_ms: int
    client_id: int = 0
    seq: int = 0
    incarnation: int = 0
    key: bytes = b""
    """Always empty: lease commands have no key (here so commands share one shape)."""


@dataclass(frozen=True, slots=True)
class LeaseKeepAlive:
    lease: int
    client_id: int = 0
    seq: int = 0
    incarnation: int = 0
    key: bytes = b""


@dataclass(frozen=True, slots=True)
class LeaseRevoke:
    """Revoke ``lease``; an expiry (``if_touched`` != 0) only if the lease was last granted
    or kept alive at that index: the leader decided from that state, and a keep-alive
    that reached the log first wins (then the revoke applies as nothing, ``ok`` False)."""

    lease: int
    client_id: int = 0
    seq: int = 0
    incarnation: int = 0
    if_touched: int = 0
    key: bytes = b""


@dataclass(frozen=True, slots=True)
class LeaseCheckpoint:
    """The leader's note of what ``lease`` has left; lowers ``remaining_ms`` only, and
    (``if_touched`` != 0) only if the lease was last granted or kept alive at that index:
    a keep-alive ordered before it in the log restored the full TTL the leader had not
    seen yet when it measured, and must keep it."""

    lease: int
    remaining_ms: int
    client_id: int = 0
    seq: int = 0
    incarnation: int = 0
    if_touched: int = 0
    key: bytes = b""


LeaseCommand = LeaseGrant | LeaseKeepAlive | LeaseRevoke | LeaseCheckpoint


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    ttl_ms: int
    remaining_ms: int
    """What the lease had left at the last checkpoint (the TTL after a grant or keep-alive)."""
    touched: int
    """Index of the last grant or keep-alive."""


_RECORD = struct.Struct("<QQQ")


def encode_lease(r: LeaseRecord) -> bytes:
    return _RECORD.pack(r.ttl_ms, r.remaining_ms, r.touched)


def decode_lease(buf: bytes) -> LeaseRecord:
    if len(buf) != _RECORD.size:
        raise ValueError(f"lease record of {len(buf)} bytes, want {_RECORD.size}")
    return LeaseRecord(*_RECORD.unpack(buf))


def check_ttl(ttl_ms: int) -> str | None:
    """Why ``ttl_ms`` is refused, or None."""
    if not MIN_TTL_MS <= ttl_ms <= MAX_TTL_MS:
        return f"lease TTL must be {MIN_TTL_MS} ms to {MAX_TTL_MS} ms, got {ttl_ms} ms"
    return None


class LeaseTxn(Protocol):
    """The lease side of the store one apply runs against (GroupTables or MemoryKV)."""

    def get(self, key: bytes) -> KeyValue | None: ...

    def delete(self, key: bytes) -> None: ...

    def lease(self, lease: int) -> LeaseRecord | None: ...

    def set_lease(self, lease: int, record: LeaseRecord) -> None: ...

    def drop_lease(self, lease: int) -> list[bytes]:
        """Forget the lease and its attachments; returns the keys that were attached."""
        ...

    def has_leases(self) -> bool:
        """Whether the group holds any lease (else no key is attached: writes skip the
        attachment lookup)."""
        ...

    def key_lease(self, key: bytes) -> int:
        """The lease ``key`` is attached to (0: none)."""
        ...

    def attach(self, key: bytes, lease: int) -> None:
        """Attach ``key`` to ``lease`` (0: detach it from any)."""
        ...


def apply_lease(
    txn: LeaseTxn,
    index: int,
    rev: int,
    cmd: LeaseCommand,
    owns: Callable[[bytes], bool] | None = None,
) -> ApplyResult:
    """Apply one lease command at entry ``index`` (writes at revision ``rev``; a revoke
    deletes only keys ``owns`` says the group owns). ``ok``: grant, the lease is new; the
    others, the lease existed."""
    cur = txn.lease(cmd.lease)
    if isinstance(cmd, LeaseGrant):
        if cur is not None:
            return ApplyResult(index, rev, False, None, None, ApplyError.LEASE_EXISTS)
        if not 0 < cmd.lease <= MAX_LEASE_ID or check_ttl(cmd.ttl_ms) is not None:
            return ApplyResult(index, rev, False, None, None, ApplyError.LEASE_INVALID)
        txn.set_lease(cmd.lease, LeaseRecord(cmd.ttl_ms, cmd.ttl_ms, index))
        return ApplyResult(index, rev, True, None, None)
    if cur is None:
        return ApplyResult(index, rev, False, None, None, ApplyError.LEASE_NOT_FOUND)
    if isinstance(cmd, LeaseKeepAlive):
        if cur.remaining_ms == 0:
            # Run out (a merge took it from one side only, storage/tables.py _run_out; or
            # a leader's last checkpoint): dead, its revoke on the way. Renewed, it came
            # back to life with keys the other side's expiry had deleted, and the revoke,
            # made for the run-out record, was refused.
            return ApplyResult(index, rev, False, None, None, ApplyError.LEASE_NOT_FOUND)
        txn.set_lease(cmd.lease, LeaseRecord(cur.ttl_ms, cur.ttl_ms, index))
        return ApplyResult(index, rev, True, None, None, ttl_ms=cur.ttl_ms)
    elif isinstance(cmd, LeaseCheckpoint):
        stale = cmd.if_touched and cmd.if_touched != cur.touched
        if cmd.remaining_ms < cur.remaining_ms and not stale:
            txn.set_lease(cmd.lease, LeaseRecord(cur.ttl_ms, cmd.remaining_ms, cur.touched))
    elif cmd.if_touched and cmd.if_touched != cur.touched:
        return ApplyResult(index, rev, False, None, None)
    else:
        for key in txn.drop_lease(cmd.lease):
            if owns is None or owns(key):
                txn.delete(key)
    return ApplyResult(index, rev, True, None, None)


def reattach(txn: LeaseTxn, key: bytes, lease: int) -> None:
    """A write of ``key`` applied: it now belongs to ``lease`` (0: to none)."""
    if (lease or txn.has_leases()) and txn.key_lease(key) != lease:
        txn.attach(key, lease)


def lease_missing(txn: LeaseTxn, lease: int) -> bool:
    """A write asks for ``lease`` and the group does not hold it."""
    return lease != 0 and txn.lease(lease) is None
