"""The kv and sessions tables of one group, seen through one LMDB transaction.

Rule: this is the only module that reads or writes the kv and sessions sub-databases.
Sessions live under the group's key prefix; user data is one key space per node and a
group reads, scans, snapshots and replaces only the range it owns (``owned``: its shard
descriptor's [start, end), the whole key space for an unsharded group, nothing for the
meta group), so groups never see each other's data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from kvstore.shard.descriptor import META_GROUP, Descriptor
from kvstore.statemachine.apply import SESSION_WINDOW, SessionId, SessionState
from kvstore.statemachine.leases import LeaseRecord
from kvstore.statemachine.records import (
    decode_clock,
    decode_kv,
    decode_result,
    decode_session,
    encode_clock,
    encode_kv,
    encode_result,
    encode_session,
)
from kvstore.statemachine.types import ApplyResult, KeyValue
from kvstore.storage import keys
from kvstore.storage.errors import CorruptionError
from kvstore.storage.leases import LeaseTable, is_lease_key

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Dbs:
    """Handles of the named sub-databases of a node's environment."""

    log: Any
    meta: Any
    snapshot: Any
    kv: Any
    sessions: Any
    history: Any


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
    is a write transaction (then call ``flush()`` before the transaction commits)."""

    def __init__(self, txn: Any, dbs: Dbs, group: int, owned: Owned = WHOLE) -> None:
        self.txn = txn
        self.dbs = dbs
        self.group = group
        self.owned = owned
        self._states: dict[SessionId, SessionState | None] = {}
        """Sessions as of this transaction (read-through, write-back: see flush)."""
        self._dirty: set[SessionId] = set()
        self._clock: int | None = None
        self._time = 0
        self._clock_dirty = False
        self._scur: Any = None
        self.leases = LeaseTable(txn, dbs.sessions, group)

    # -- kv -----------------------------------------------------------------
    # Keys longer than keys.KEY_INLINE are stored under a prefix and a hash (keys.py):
    # point reads find them directly, range reads sort each bucket of them by full key.
    def get(self, key: bytes) -> KeyValue | None:
        stored = keys.kv_key(key)
        record = self.txn.get(stored, db=self.dbs.kv)
        if record is None:
            return None
        if keys.is_long(stored):
            full, record = self._split(stored, record)
            if full != key:
                return None  # another key with the same 128-bit hash
        return self._kv(key, record)

    def put(self, kv: KeyValue) -> None:
        self._put_record(kv.key, encode_kv(kv))

    def _put_record(self, key: bytes, record: bytes) -> None:
        stored = keys.kv_key(key)
        if keys.is_long(stored):
            record = keys.long_value(key, record)
        self.txn.put(stored, record, db=self.dbs.kv)

    def delete(self, key: bytes) -> None:
        self.txn.delete(keys.kv_key(key), db=self.dbs.kv)

    def scan(self, start: bytes, end: bytes = b"", limit: int = 0) -> list[KeyValue]:
        """Keys in [start, end) in order; ``end=b""``: to the end; ``limit<=0``: all."""
        out: list[KeyValue] = []
        for key, record in self.raw_kv(start, end):
            out.append(self._kv(key, record))
            if len(out) == limit:
                break
        return out

    def scan_page(
        self, start: bytes, end: bytes, limit: int, max_bytes: int
    ) -> tuple[list[KeyValue], bool]:
        """Like ``scan``, and also stop once the rows hold ``max_bytes`` of keys and
        values (at least one row; ``max_bytes<=0``: no cap). True when rows remain."""
        out: list[KeyValue] = []
        size = 0
        for key, record in self.raw_kv(start, end):
            if 0 < limit <= len(out) or 0 < max_bytes <= size:
                return out, True
            out.append(self._kv(key, record))
            size += len(key) + len(record)
        return out, False

    def raw_kv(self, start: bytes = b"", end: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(user key, stored record) pairs in [start, end) in key order, within the owned
        range."""
        if self.owned is None:
            return
        lo_own, hi_own = self.owned
        start = max(start, lo_own)
        if hi_own and (not end or end > hi_own):
            end = hi_own
        if end and start >= end:
            return
        cur = self.txn.cursor(db=self.dbs.kv)
        if not cur.set_range(keys.kv_seek(start)):
            return
        past = _past(end)
        n = len(keys.DATA_PREFIX)
        k = cur.key()
        while k and not past(k):
            if not keys.is_long(k):
                key = k[n:]
                if key >= start and (not end or key < end):
                    yield key, cur.value()
                k = cur.key() if cur.next() else b""
                continue
            bucket, rows = keys.bucket(k), []
            while k and keys.is_long(k) and k.startswith(bucket):
                rows.append(self._split(k, cur.value()))
                k = cur.key() if cur.next() else b""
            rows.sort()
            for key, record in rows:
                if end and key >= end:
                    return
                if key >= start:
                    yield key, record

    def _split(self, stored: bytes, value: bytes) -> tuple[bytes, bytes]:
        try:
            return keys.split_long_value(stored, value)
        except ValueError as e:
            raise CorruptionError(
                f"kv record under {stored[:40]!r}...: {e}", group=self.group
            ) from e

    def _kv(self, key: bytes, record: bytes) -> KeyValue:
        try:
            return decode_kv(key, record)
        except ValueError as e:
            raise CorruptionError(f"kv record of {key!r}: {e}", group=self.group) from e

    # -- sessions ------------------------------------------------------------
    # Staged in this object and written by flush(): a batch from one client touches its
    # session once per command, and one write per session per transaction is enough.
    def clock(self) -> int:
        if self._clock is None:
            record = self.txn.get(keys.session_clock_key(self.group), db=self.dbs.sessions)
            self._clock, self._time = (
                (0, 0) if record is None else self._decode(decode_clock, record, "clock")
            )
        return self._clock

    def set_clock(self, now_ms: int) -> None:
        self.clock()
        self._clock = now_ms
        self._clock_dirty = True

    def applied_time(self) -> int:
        """Kept in the log clock's record, so snapshots and splits carry it with it."""
        self.clock()
        return self._time

    def set_applied_time(self, t: int) -> None:
        self.clock()
        self._time = t
        self._clock_dirty = True

    def session(self, sid: SessionId) -> SessionState | None:
        if sid in self._states:
            return self._states[sid]
        record = self.txn.get(keys.session_key(self.group, *sid), db=self.dbs.sessions)
        state = None if record is None else self._decode(decode_session, record, f"session {sid}")
        self._states[sid] = state
        return state

    def session_result(self, sid: SessionId, seq: int) -> ApplyResult | None:
        key = keys.outcome_key(self.group, *sid, seq)
        record = self.txn.get(key, db=self.dbs.sessions)
        return None if record is None else self._decode(decode_result, record, f"{sid}/{seq}")

    def session_record(self, sid: SessionId, seq: int, result: ApplyResult, now_ms: int) -> None:
        old = self.session(sid)
        last = seq if old is None else max(seq, old.last_seq)
        self.txn.put(
            keys.outcome_key(self.group, *sid, seq), encode_result(result), db=self.dbs.sessions
        )
        self._states[sid] = SessionState(last, result.index, now_ms)
        self._dirty.add(sid)
        if old is None or last == old.last_seq:
            # No new maximum: seqs <= last - SESSION_WINDOW are already forgotten, and this
            # one is above that (an older one would have been refused as expired).
            return
        floor = last - SESSION_WINDOW
        if floor >= 0:
            cur = self._session_cursor()
            stop = keys.outcome_key(self.group, *sid, floor + 1)
            cur.set_range(keys.outcome_key(self.group, *sid, 0))
            while True:
                k = cur.key()
                if not k or k >= stop:
                    return
                cur.delete()

    def session_drop(self, sid: SessionId) -> None:
        self._drop(sid)

    def _drop(self, sid: SessionId) -> int:
        """Forget the session; returns how many records went."""
        self._states[sid] = None
        self._dirty.discard(sid)
        return delete_range(
            self.txn,
            self.dbs.sessions,
            keys.session_key(self.group, *sid),
            keys.session_end(self.group, *sid),
        )

    # -- leases (storage/leases.py) -------------------------------------------
    def lease(self, lease: int) -> LeaseRecord | None:
        try:
            return self.leases.get(lease)
        except ValueError as e:
            raise CorruptionError(f"lease {lease}: {e}", group=self.group) from e

    def set_lease(self, lease: int, record: LeaseRecord) -> None:
        self.leases.put(lease, record)

    def drop_lease(self, lease: int) -> list[bytes]:
        return self.leases.drop(lease)

    def has_leases(self) -> bool:
        return self.leases.any()

    def key_lease(self, key: bytes) -> int:
        return self.leases.key_lease(key)

    def attach(self, key: bytes, lease: int) -> None:
        self.leases.attach(key, lease)

    def flush(self) -> None:
        """Write the staged session states and log clock into the transaction."""
        put, db = self.txn.put, self.dbs.sessions
        for sid in self._dirty:
            state = self._states[sid]
            assert state is not None
            put(keys.session_key(self.group, *sid), encode_session(state), db=db)
        self._dirty.clear()
        if self._clock_dirty:
            record = encode_clock(self.clock(), self._time)
            put(keys.session_clock_key(self.group), record, db=db)
            self._clock_dirty = False

    def sweep_sessions(self, start: bytes, index: int, budget: int) -> bytes:
        """Drop the sessions forgotten at entry ``index`` (and the outcomes of those
        expired) among at most ``budget`` sessions
        from key ``start`` on (b"": the first), deleting at most 16 records per session
        of budget; returns the key to go on from next time (b"" when it reached the end).
        The bounded step that keeps a persist's cost independent of the table's size."""
        self.flush()
        now = self.clock()
        end = keys.group_end(self.group)
        cur = self._session_cursor()
        at = start or keys.session_clock_key(self.group)
        deleted = 0
        for _ in range(budget):
            if not cur.set_range(at) or cur.key() >= end:
                return b""
            k = cur.key()
            if len(k) == len(keys.session_clock_key(self.group)):
                at = k + b"\x00"
                continue
            sid = keys.session_id(k)
            at = keys.session_end(self.group, *sid)
            if sid[0] == 0:  # client id 0: leases (storage/leases.py), not a session
                continue
            if len(k) == len(keys.session_key(self.group, *sid)):
                state = self._decode(decode_session, cur.value(), f"session {sid}")
                if state.forgotten(index, now):
                    deleted += self._drop(sid)
                elif state.expired(index, now):
                    # Refused from now on (apply.py): its outcomes are never read again.
                    deleted += delete_range(
                        self.txn,
                        self.dbs.sessions,
                        keys.outcome_key(self.group, *sid, 0),
                        keys.session_end(self.group, *sid),
                    )
            else:  # outcomes without a state: unreachable, drop them
                deleted += self._drop(sid)
            if deleted >= 16 * budget:
                break
        return at

    def _session_cursor(self) -> Any:
        if self._scur is None:
            self._scur = self.txn.cursor(db=self.dbs.sessions)
        return self._scur

    def _decode(self, fn: Callable[[bytes], _T], record: bytes, what: str) -> _T:
        try:
            return fn(record)
        except ValueError as e:
            raise CorruptionError(f"{what}: {e}", group=self.group) from e

    def raw_sessions(self) -> Iterator[tuple[bytes, bytes]]:
        """(key after the group prefix, stored record) of every session record, in order
        (what a snapshot image carries; expired sessions may be among them)."""
        self.flush()
        prefix = keys.group_prefix(self.group)
        end = keys.group_end(self.group)
        cur = self.txn.cursor(db=self.dbs.sessions)
        if not cur.set_range(prefix):
            return
        n = len(prefix)
        for k, v in cur:
            if k >= end:
                return
            yield k[n:], v

    # -- whole-group maintenance ---------------------------------------------
    def replace(
        self, kv: Iterable[tuple[bytes, bytes]], sessions: Iterable[tuple[bytes, bytes]]
    ) -> None:
        """Replace the group's kv (its owned range) and sessions by stored records (a
        snapshot image's; records outside the owned range are not written)."""
        self.delete_owned()
        group = keys.group_prefix(self.group)
        delete_range(self.txn, self.dbs.sessions, group, keys.group_end(self.group))
        self._states.clear()
        self._dirty.clear()
        self._clock, self._time, self._clock_dirty = None, 0, False
        # putmulti: one C loop over the records instead of a Python call per put (a
        # 1 M-key image took seconds more). Keys may repeat only in a corrupt image,
        # whose checksum fails at the end and aborts the transaction.
        owned, inline, prefix = self.owned, keys.KEY_INLINE, keys.DATA_PREFIX
        whole = owned == WHOLE
        self.txn.cursor(db=self.dbs.kv).putmulti(
            (prefix + key, record) if len(key) <= inline else _long_row(key, record)
            for key, record in kv
            if whole or owns(owned, key)
        )
        self.txn.cursor(db=self.dbs.sessions).putmulti(
            (group + suffix, record) for suffix, record in sessions
        )

    def delete_owned(self) -> int:
        """Delete every user key of the owned range; returns how many."""
        if self.owned is None:
            return 0
        lo, hi = self.owned
        if len(lo) <= keys.KEY_INLINE and len(hi) <= keys.KEY_INLINE:
            return delete_range(self.txn, self.dbs.kv, keys.kv_key(lo), keys.kv_end(hi))
        # A bound inside a bucket of long keys: judge each key by its full bytes.
        cur = self.txn.cursor(db=self.dbs.kv)
        cur.set_range(keys.kv_seek(lo))
        past, n, deleted = _past(hi), len(keys.DATA_PREFIX), 0
        while True:
            k = cur.key()
            if not k or past(k):
                return deleted
            key = self._split(k, cur.value())[0] if keys.is_long(k) else k[n:]
            if owns(self.owned, key):
                cur.delete()
                deleted += 1
            elif not cur.next():
                return deleted

    def merge_sessions_from(self, source: int, index: int, source_index: int = 0) -> None:
        """Take ``source``'s sessions into this group (a merge at entry ``index``; the
        source frozen at its entry ``source_index``): its outcomes are added (a seq this
        group also holds keeps this group's), a session both hold keeps the higher last
        seq, and every session the source held counts as active at ``index`` (the
        source's indexes mean nothing in this log; being kept longer never changes an
        answer). The applied time becomes the later of the two; the log clock stays this
        group's, and the source's session times move into it (each keeps how long it
        has been idle): log time counts each group's leaders' monotonic time, so two
        groups' clocks drift apart by the time between leaders each did not count (idle
        hours across a leader change), and taking the later clock made the other side's
        live sessions look idle that long: expired, or forgotten, and a retry of a write
        that had applied applied again.
        Sessions forgotten on either side (at ``source_index`` and the source's clock, at
        ``index`` and this group's) count as absent. An expired side brings no outcomes
        (whether a replica has swept them yet differs between replicas) but its last seq
        raised by SESSION_WINDOW: every seq it may have applied stays refused as
        possibly applied (SESSION_EXPIRED), as before the merge. Counting it as absent
        let a retry of a write the expired session had applied apply a second time."""
        self.flush()
        src = GroupTables(self.txn, self.dbs, source, None)
        mine_now, src_now = self.clock(), src.clock()
        held = {lease for lease, _ in self.leases.all()} ^ {lease for lease, _ in src.leases.all()}
        # The applied time too (docs/sharding.md): the source's is fixed from its
        # PrepareMerge on (a frozen source's entries do not move it), so every replica
        # of the target reaches the same time here.
        t = max(self.applied_time(), src.applied_time())
        if t != self.applied_time():
            self.set_applied_time(t)
        state_len = len(keys.session_key(source, 0, 0)) - len(keys.group_prefix(source))
        prefix = keys.group_prefix(self.group)
        expired: set[SessionId] = set()
        for suffix, record in list(src.raw_sessions()):
            if not suffix:
                continue  # the source's log clock: its times move into ours
            sid = keys.session_id(prefix + suffix)
            if len(suffix) != state_len or is_lease_key(suffix):
                # Outcomes, and leases: a lease both halves hold (granted on each shard)
                # keeps this group's record; attachments are disjoint (leases.prune).
                # Outcomes of a session expired in the source stay behind.
                if sid in expired:
                    continue
                if self.txn.get(prefix + suffix, db=self.dbs.sessions) is None:
                    self.txn.put(prefix + suffix, record, db=self.dbs.sessions)
                continue
            theirs = src._decode(decode_session, record, f"session {sid}")
            if theirs.forgotten(source_index, src_now):
                expired.add(sid)  # a state sorts before its outcomes
                continue
            their_seq = theirs.last_seq
            if theirs.expired(source_index, src_now):
                expired.add(sid)
                their_seq += SESSION_WINDOW
            mine = self.session(sid)
            if mine is not None and mine.expired(index, mine_now):
                self._drop(sid)  # its outcomes must not come back with the source's
                if not mine.forgotten(index, mine_now):
                    their_seq = max(their_seq, mine.last_seq + SESSION_WINDOW)
                mine = None
            last_seq = their_seq if mine is None else max(mine.last_seq, their_seq)
            # Clamped at 0: idle for less than it was, so kept longer, never shorter.
            their_time = max(0, theirs.last_time_ms + mine_now - src_now)
            last_time = their_time if mine is None else max(mine.last_time_ms, their_time)
            self._states[sid] = SessionState(last_seq, index, last_time)
            self._dirty.add(sid)
        self.flush()
        self._run_out(held, index)

    def _run_out(self, leases: set[int], index: int) -> None:
        """A merge's leases that only one side held (docs/leases.md: a lease is alive
        only while every shard holds it; the other side's leader expired it, or it was
        granted while that side was being split off) come in run out: remaining 0,
        touched at the merge entry, so the target's leader revokes them at once and their
        keys go through the log as at any expiry. Taken in as they were, such a lease
        came back to life: its keys stayed, a put could attach to it, keep-alives
        renewed it."""
        for lease, record in self.leases.all():
            if lease in leases:
                self.leases.put(lease, LeaseRecord(record.ttl_ms, 0, index))

    def copy_sessions_to(self, group: int) -> None:
        """Copy this group's session records (and log clock) to ``group`` (a split's new
        shard)."""
        put, prefix = self.txn.put, keys.group_prefix(group)
        for suffix, record in list(self.raw_sessions()):
            put(prefix + suffix, record, db=self.dbs.sessions)


def _past(end: bytes) -> Callable[[bytes], bool]:
    """Whether a stored kv key is past every user key below ``end`` (b"": unbounded).
    A long ``end``'s own bucket (and the short key equal to its prefix) is not past: its
    keys are judged by their full bytes."""
    hi = keys.kv_end(end)
    if len(end) <= keys.KEY_INLINE:
        return lambda k: k >= hi
    return lambda k: k >= hi and not k.startswith(hi)


def _long_row(key: bytes, record: bytes) -> tuple[bytes, bytes]:
    """The stored (key, value) of a kv record whose user key is longer than KEY_INLINE."""
    return keys.kv_key(key), keys.long_value(key, record)


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
