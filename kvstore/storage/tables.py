"""The kv and sessions tables of one group, seen through one LMDB transaction.

Rule: this is the only module that reads or writes the kv and sessions sub-databases.
Sessions live under the group's key prefix; user data is one key space per node and a
group reads, scans, snapshots and replaces only the range it owns (``owned``: its shard
descriptor's [start, end), the whole key space for an unsharded group, nothing for the
meta group), so groups never see each other's data.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kvstore.shard.descriptor import META_GROUP, Descriptor
from kvstore.statemachine.apply import SESSION_WINDOW
from kvstore.statemachine.records import (
    decode_kv,
    decode_result,
    encode_kv,
    encode_result,
    result_index,
)
from kvstore.statemachine.types import ApplyResult, KeyValue
from kvstore.storage import keys
from kvstore.storage.errors import CorruptionError


@dataclass(frozen=True, slots=True)
class Dbs:
    """Handles of the named sub-databases of a node's environment."""

    log: Any
    meta: Any
    snapshot: Any
    kv: Any
    sessions: Any


Owned = tuple[bytes, bytes] | None
"""A group's user key range [start, end) (end b"": unbounded); None: no user keys."""
WHOLE: Owned = (b"", b"")


def owned_range(group: int, shard: Descriptor | None) -> Owned:
    """What a group owns: its descriptor's range; without one, the meta group nothing and
    any other group (an unsharded node's group 1) the whole key space."""
    if shard is not None:
        return (shard.start, shard.end)
    return None if group == META_GROUP else WHOLE


def owns(owned: Owned, key: bytes) -> bool:
    return owned is not None and owned[0] <= key and (not owned[1] or key < owned[1])


class GroupTables:
    """kv + sessions of ``group`` in ``txn``; implements statemachine.KVTxn when ``txn``
    is a write transaction."""

    def __init__(self, txn: Any, dbs: Dbs, group: int, owned: Owned = WHOLE) -> None:
        self.txn = txn
        self.dbs = dbs
        self.group = group
        self.owned = owned
        self._prefix = keys.DATA_PREFIX
        self._last_seq: dict[int, int] = {}
        """Each client's highest recorded seq, as of this transaction (a read-through
        cache: session lookups dominate applying a batch)."""
        self._scur: Any = None

    # -- kv -----------------------------------------------------------------
    def get(self, key: bytes) -> KeyValue | None:
        record = self.txn.get(self._prefix + key, db=self.dbs.kv)
        return None if record is None else self._kv(key, record)

    def put(self, kv: KeyValue) -> None:
        self.txn.put(self._prefix + kv.key, encode_kv(kv), db=self.dbs.kv)

    def delete(self, key: bytes) -> None:
        self.txn.delete(self._prefix + key, db=self.dbs.kv)

    def scan(self, start: bytes, end: bytes = b"", limit: int = 0) -> list[KeyValue]:
        """Keys in [start, end) in order; ``end=b""``: to the end; ``limit<=0``: all."""
        out: list[KeyValue] = []
        for key, record in self.raw_kv(start, end):
            out.append(self._kv(key, record))
            if len(out) == limit:
                break
        return out

    def raw_kv(self, start: bytes = b"", end: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(user key, stored record) pairs in [start, end), within the owned range."""
        if self.owned is None:
            return
        lo_own, hi_own = self.owned
        start = max(start, lo_own)
        if hi_own and (not end or end > hi_own):
            end = hi_own
        if end and start >= end:
            return
        hi = keys.kv_end(end)
        n = len(self._prefix)
        cur = self.txn.cursor(db=self.dbs.kv)
        if not cur.set_range(self._prefix + start):
            return
        for k, v in cur:
            if k >= hi:
                return
            yield k[n:], v

    def _kv(self, key: bytes, record: bytes) -> KeyValue:
        try:
            return decode_kv(key, record)
        except ValueError as e:
            raise CorruptionError(f"kv record of {key!r}: {e}", group=self.group) from e

    # -- sessions ------------------------------------------------------------
    def session_result(self, client_id: int, seq: int) -> ApplyResult | None:
        record = self.txn.get(keys.session_key(self.group, client_id, seq), db=self.dbs.sessions)
        if record is None:
            return None
        try:
            return decode_result(record)
        except ValueError as e:
            raise CorruptionError(f"session {client_id}/{seq}: {e}", group=self.group) from e

    def _session_cursor(self) -> Any:
        if self._scur is None:
            self._scur = self.txn.cursor(db=self.dbs.sessions)
        return self._scur

    def session_last_seq(self, client_id: int) -> int:
        last = self._last_seq.get(client_id)
        if last is None:
            found = self._last_session(client_id)
            last = self._last_seq[client_id] = 0 if found is None else found[0]
        return last

    def _last_session(self, client_id: int) -> tuple[int, bytes] | None:
        """(seq, result record) of the client's highest recorded seq."""
        cur = self._session_cursor()
        # The last key below the next client's range, if it is this client's.
        positioned = cur.set_range(keys.session_end(self.group, client_id))
        found = cur.prev() if positioned else cur.last()
        if not found or not cur.key().startswith(keys.session_prefix(self.group, client_id)):
            return None
        return keys.session_parts(cur.key())[1], cur.value()

    def session_record(self, client_id: int, seq: int, result: ApplyResult) -> None:
        last = self.session_last_seq(client_id)
        self.txn.put(
            keys.session_key(self.group, client_id, seq),
            encode_result(result),
            db=self.dbs.sessions,
        )
        if seq <= last:
            # Not a new maximum: seqs <= last - SESSION_WINDOW are already forgotten, and
            # this one is above that (an older one would have been refused as expired).
            return
        self._last_seq[client_id] = seq
        floor = seq - SESSION_WINDOW
        if floor >= 0:
            cur = self._session_cursor()
            stop = keys.session_key(self.group, client_id, floor + 1)
            cur.set_range(keys.session_prefix(self.group, client_id))
            while True:
                k = cur.key()
                if not k or k >= stop:
                    return
                cur.delete()

    def expire_sessions(self, idle_before: int) -> int:
        """Forget every client whose newest recorded result is from an entry at or below
        ``idle_before``; returns how many clients were forgotten."""
        self._last_seq.clear()
        db, n = self.dbs.sessions, 0
        cur = self.txn.cursor(db=db)
        end = keys.group_end(self.group)
        cur.set_range(keys.group_prefix(self.group))
        while True:
            k = cur.key()
            if not k or k >= end:
                return n
            client = keys.session_parts(k)[0]
            last = self._last_session(client)
            assert last is not None
            if result_index(last[1]) <= idle_before:
                delete_range(
                    self.txn,
                    db,
                    keys.session_prefix(self.group, client),
                    keys.session_end(self.group, client),
                )
                n += 1
            cur.set_range(keys.session_end(self.group, client))

    def raw_sessions(self) -> Iterator[tuple[int, int, bytes]]:
        prefix = keys.group_prefix(self.group)
        end = keys.group_end(self.group)
        cur = self.txn.cursor(db=self.dbs.sessions)
        if not cur.set_range(prefix):
            return
        for k, v in cur:
            if k >= end:
                return
            client, seq = keys.session_parts(k)
            yield client, seq, v

    # -- whole-group maintenance ---------------------------------------------
    def replace(
        self, kv: Iterable[tuple[bytes, bytes]], sessions: Iterable[tuple[int, int, bytes]]
    ) -> None:
        """Replace the group's kv (its owned range) and sessions by stored records (a
        snapshot image's; records outside the owned range are not written)."""
        self.delete_owned()
        delete_range(
            self.txn, self.dbs.sessions, keys.group_prefix(self.group), keys.group_end(self.group)
        )
        self._last_seq.clear()
        put = self.txn.put
        for key, record in kv:
            if owns(self.owned, key):
                put(self._prefix + key, record, db=self.dbs.kv)
        for client, seq, record in sessions:
            put(keys.session_key(self.group, client, seq), record, db=self.dbs.sessions)

    def delete_owned(self) -> int:
        """Delete every user key of the owned range; returns how many."""
        if self.owned is None:
            return 0
        lo, hi = self.owned
        return delete_range(self.txn, self.dbs.kv, keys.kv_key(lo), keys.kv_end(hi))

    def copy_sessions_to(self, group: int) -> None:
        """Copy this group's session records to ``group`` (a split's new shard)."""
        put = self.txn.put
        for client, seq, record in list(self.raw_sessions()):
            put(keys.session_key(group, client, seq), record, db=self.dbs.sessions)


def delete_range(txn: Any, db: Any, lo: bytes, hi: bytes) -> int:
    """Delete keys in [lo, hi); returns how many."""
    cur = txn.cursor(db=db)
    cur.set_range(lo)
    n = 0
    while True:
        k = cur.key()
        if not k or k >= hi:
            return n
        cur.delete()
        n += 1
