"""A group's leases in the sessions sub-database (statemachine/leases.py says what they mean).

Layout, under the group's prefix and the client id 0 that no session uses (so snapshots,
splits and merges carry leases with the sessions, and the session sweep skips them):

    group u64 | 0 u64 | lease u64                  -> lease record (leases.encode_lease)
    group u64 | 0 u64 | lease u64 | h(key) 16      -> user key attached to the lease
    group u64 | 0 u64 | 0 u64 | h(key) 16          -> u64 lease | user key (the key's lease)

``h`` is a 16-byte BLAKE2b of the user key: a user key (up to 510 bytes) after a 24-byte
prefix would pass LMDB's 511-byte key limit. Both records hold the key itself, so a
collision would show as a mismatch, never as the wrong key deleted.

Rule: a group holds attachments only for keys it owns (a split drops each half's
others: ``prune``), so a merge's union of both halves' records is exact.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import Any

from kvstore.statemachine.leases import LeaseRecord, decode_lease, encode_lease
from kvstore.storage import keys

_U64 = struct.Struct("<Q")


def _h(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=16).digest()


def is_lease_key(suffix: bytes) -> bool:
    """A sessions-table key (after the group prefix) that belongs to leases."""
    return len(suffix) >= 16 and suffix[:8] == b"\0" * 8


class LeaseTable:
    """The leases of ``group`` in ``txn`` (read-through; writes go straight to the txn)."""

    def __init__(self, txn: Any, db: Any, group: int) -> None:
        self.txn = txn
        self.db = db
        self.group = group
        self._any: bool | None = None

    def _record_key(self, lease: int) -> bytes:
        return keys.session_key(self.group, 0, lease)

    def get(self, lease: int) -> LeaseRecord | None:
        record = self.txn.get(self._record_key(lease), db=self.db)
        return None if record is None else decode_lease(record)

    def put(self, lease: int, record: LeaseRecord) -> None:
        self.txn.put(self._record_key(lease), encode_lease(record), db=self.db)
        self._any = True

    def any(self) -> bool:
        if self._any is None:
            cur = self.txn.cursor(db=self.db)
            self._any = bool(cur.set_range(self._record_key(1))) and cur.key() < keys.session_key(
                self.group, 1, 0
            )
        return self._any

    def all(self) -> list[tuple[int, LeaseRecord]]:
        """Every lease of the group, by id."""
        out: list[tuple[int, LeaseRecord]] = []
        cur = self.txn.cursor(db=self.db)
        end = keys.session_key(self.group, 1, 0)
        at = self._record_key(1)
        while cur.set_range(at) and cur.key() < end:
            k = cur.key()
            lease = keys.session_id(k)[1]
            if len(k) == 24:
                out.append((lease, decode_lease(cur.value())))
            at = keys.session_end(self.group, 0, lease)
        return out

    def keys_of(self, lease: int, limit: int = 0) -> list[bytes]:
        """The user keys attached to ``lease`` (in hash order; ``limit`` > 0: at most)."""
        out: list[bytes] = []
        cur = self.txn.cursor(db=self.db)
        lo = self._record_key(lease)
        hi = keys.session_end(self.group, 0, lease)
        if not cur.set_range(lo + b"\0"):
            return out
        for k, v in cur:
            if k >= hi or (0 < limit <= len(out)):
                break
            out.append(bytes(v))
        return out

    def drop(self, lease: int) -> list[bytes]:
        attached = self.keys_of(lease)
        self.txn.delete(self._record_key(lease), db=self.db)
        base = self._record_key(lease)
        rev = keys.session_key(self.group, 0, 0)
        for key in attached:
            h = _h(key)
            self.txn.delete(base + h, db=self.db)
            self.txn.delete(rev + h, db=self.db)
        self._any = None
        return attached

    def key_lease(self, key: bytes) -> int:
        record = self.txn.get(keys.session_key(self.group, 0, 0) + _h(key), db=self.db)
        if record is None or bytes(record[8:]) != key:
            return 0
        lease: int = _U64.unpack_from(record)[0]
        return lease

    def attach(self, key: bytes, lease: int) -> None:
        h = _h(key)
        rev = keys.session_key(self.group, 0, 0) + h
        old = self.key_lease(key)
        if old:
            self.txn.delete(self._record_key(old) + h, db=self.db)
        if lease:
            self.txn.put(rev, _U64.pack(lease) + key, db=self.db)
            self.txn.put(self._record_key(lease) + h, key, db=self.db)
        elif old:
            self.txn.delete(rev, db=self.db)

    def prune(self, owns: Callable[[bytes], bool]) -> None:
        """Drop the attachments of keys the group does not own (after a split)."""
        rev = keys.session_key(self.group, 0, 0)
        end = keys.session_end(self.group, 0, 0)
        cur = self.txn.cursor(db=self.db)
        gone: list[tuple[bytes, int, bytes]] = []
        if cur.set_range(rev):
            for k, v in cur:
                if k >= end:
                    break
                key = bytes(v[8:])
                if not owns(key):
                    gone.append((bytes(k), _U64.unpack_from(v)[0], key))
        for k, lease, key in gone:
            self.txn.delete(k, db=self.db)
            self.txn.delete(self._record_key(lease) + _h(key), db=self.db)
