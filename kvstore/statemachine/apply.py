"""Applies commands to a key-value store with exactly-once client sessions.

Rule: the outcome depends only on the store's contents, the entry index, the entry's
time stamp and the commands, so every replica that applies the same log reaches the same
state and answers.

Sessions (Raft thesis 6.3): a command with ``client_id != 0`` belongs to the session
(client_id, incarnation). A client picks a fresh incarnation each time it starts, so a
restarted client reusing its client_id is a new session and never gets the answers its
earlier process stored. A retried seq gets the stored outcome back and does not apply
again. Each session keeps the outcomes of its last SESSION_WINDOW seqs; a seq at or below
``last - SESSION_WINDOW`` with no record may have applied before, so it is refused
(ApplyError.SESSION_EXPIRED). Seqs inside the window may arrive out of order (pipelined
clients); each applies once. A stored outcome is the revision, the success flag and the
error: no values (a replayed answer has ``prev`` and ``kv`` None), so a session costs
tens of bytes per remembered seq whatever the values written.

Expiry: a session is expired at an entry when no command of it applied in the last
SESSION_IDLE_ENTRIES entries or the last SESSION_IDLE_MS of log time. An expired session
keeps its state (tens of bytes, its outcomes go) until it is forgotten, after
SESSION_FORGET_ENTRIES entries or SESSION_FORGET_MS of log time: until then every command
of it is refused (SESSION_EXPIRED) and applies nothing, since its outcomes are gone and a
retry of a write that applied would apply again. The client then starts a new session
(a new incarnation): a command it never sent before simply goes again under it, one that
may have applied is reported as indeterminate. A forgotten session counts as absent. Log time is the
highest time stamp of any applied entry (leaders stamp their batches; see ``clock``), so
it is the same on every replica and never goes back. Leaders stamp it from their
monotonic clocks, not their wall clocks (kvstore/node/logclock.py): a leader whose clock
is ahead cannot expire sessions early. Expiry is judged wherever a
session is met (expired: refuse; forgotten: absent), so WHEN a replica physically deletes
outcomes or sessions (storage sweeps them incrementally, MemoryKV at once) changes no
answer. A retry that arrives after its session was forgotten (an hour) applies again.

Applied time (causal tokens, docs/sharding.md): every batch entry gets the time
``max(stamp, applied time + 1)``, where ``stamp`` is the leader's hybrid clock in the
entry, and that becomes the group's applied time. It is a function of the log alone (the
same on every replica), rises strictly with the index whatever any clock did, and a
replica whose applied time reached ``t`` has applied every entry whose time is <= ``t``.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from kvstore.statemachine.commands import Cas, Command, Delete, KeyCommand, Put
from kvstore.statemachine.leases import (
    LeaseRecord,
    LeaseTxn,
    apply_lease,
    lease_missing,
    reattach,
)
from kvstore.statemachine.types import ApplyError, ApplyResult, KeyValue

SESSION_WINDOW = 1024
"""Seqs per session whose outcomes are kept: must exceed a client's requests in flight."""

SESSION_IDLE_ENTRIES = 100_000
"""A session with no command applied in this many entries is expired."""

SESSION_IDLE_MS = 300_000
"""A session with no command applied in this much log time (5 min) is expired."""

SESSION_FORGET_ENTRIES = 1_000_000
"""An expired session is forgotten (absent) after this many entries without a command."""

SESSION_FORGET_MS = 3_600_000
"""An expired session is forgotten after this much log time (1 h) without a command."""

MAX_KEY_SIZE = 8192
"""Longest key in bytes (etcd and Consul users keep paths of a few KiB as keys). Storage
keeps keys past LMDB's 511-byte key limit under a prefix and a hash, ordered by their full
bytes (kvstore.storage.keys)."""

SessionId = tuple[int, int]
"""(client_id, incarnation)."""


@dataclass(frozen=True, slots=True)
class SessionState:
    last_seq: int
    """Highest seq recorded."""
    last_index: int
    """Entry of the session's latest applied command."""
    last_time_ms: int
    """Log time of that entry."""

    def expired(self, index: int, now_ms: int) -> bool:
        """Idle past the bounds: its commands are refused (SESSION_EXPIRED)."""
        return (
            index - self.last_index > SESSION_IDLE_ENTRIES
            or now_ms - self.last_time_ms > SESSION_IDLE_MS
        )

    def forgotten(self, index: int, now_ms: int) -> bool:
        """Idle long past them: the session counts as absent."""
        return (
            index - self.last_index > SESSION_FORGET_ENTRIES
            or now_ms - self.last_time_ms > SESSION_FORGET_MS
        )


class KVTxn(LeaseTxn, Protocol):
    """The store one apply runs against (an LMDB write txn, or MemoryKV)."""

    def get(self, key: bytes) -> KeyValue | None: ...

    def put(self, kv: KeyValue) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def clock(self) -> int:
        """Log time in ms: the highest entry time stamp applied (0 before any)."""
        ...

    def set_clock(self, now_ms: int) -> None: ...

    def applied_time(self) -> int:
        """The time of the last batch entry applied (0 before any; see the module doc)."""
        ...

    def set_applied_time(self, t: int) -> None: ...

    def session(self, sid: SessionId) -> SessionState | None:
        """The stored session (perhaps expired and not yet swept), or None."""
        ...

    def session_result(self, sid: SessionId, seq: int) -> ApplyResult | None:
        """The stored outcome of ``seq`` (``prev``/``kv`` None), or None."""
        ...

    def session_record(self, sid: SessionId, seq: int, result: ApplyResult, now_ms: int) -> None:
        """Store the outcome, make the session's last entry ``result.index`` at log time
        ``now_ms``, and forget seqs <= max(last, seq) - SESSION_WINDOW."""
        ...

    def session_drop(self, sid: SessionId) -> None:
        """Forget the session and all its outcomes."""
        ...


def apply_commands(
    txn: KVTxn,
    index: int,
    commands: Sequence[Command],
    owns: Callable[[bytes], bool] | None = None,
    time_ms: int = 0,
    revision_offset: int = 0,
    frozen: bool = False,
) -> list[ApplyResult]:
    """Apply one entry's commands in order; one result per command. ``owns``: the
    group's key range at this index (None: every key); a command on another key applies
    as nothing (WRONG_SHARD), unless its session already holds its answer. ``time_ms``:
    the entry's time stamp (0 = none). ``revision_offset``: writes get revision
    ``index + revision_offset`` (a merged shard's, see kvstore.shard.merging).
    ``frozen``: a merge source after its PrepareMerge; nothing applies (WRONG_SHARD), lease
    commands included (they have no key, so ``owns`` does not judge them), and nothing
    changes: not the log clock, not the session table (a forgotten session is only read
    as absent, an expired one leaves the answer to the merge target). Its replicas reach
    the CommitMerge at different entries after the prepare, and the merge takes the
    source's clock and sessions as they stand."""
    now = txn.clock() if frozen else advance_clock(txn, time_ms)
    out: list[ApplyResult] = []
    for cmd in commands:
        cid = cmd.client_id
        if cid:
            sid = (cid, cmd.incarnation)
            s = txn.session(sid)
            if s is not None and s.forgotten(index, now):
                if not frozen:
                    txn.session_drop(sid)
                s = None
            if s is not None and s.expired(index, now):
                if not frozen:
                    out.append(
                        ApplyResult(index, index, False, None, None, ApplyError.SESSION_EXPIRED)
                    )
                    continue
                s = None  # a frozen merge source answers WRONG_SHARD: the target judges
            if s is not None:
                seen = txn.session_result(sid, cmd.seq)
                if seen is not None:
                    # The stored answer, stamped with the entry that carries the retry:
                    # callers match results to commands by entry index and position, so an
                    # answer still naming the original entry would shift every later
                    # command's result.
                    out.append(dataclasses.replace(seen, index=index))
                    continue
                if cmd.seq <= s.last_seq - SESSION_WINDOW:
                    out.append(
                        ApplyResult(index, index, False, None, None, ApplyError.SESSION_EXPIRED)
                    )
                    continue
        lease_cmd = not isinstance(cmd, Put | Delete | Cas)
        if frozen or (not lease_cmd and owns is not None and not owns(cmd.key)):
            out.append(ApplyResult(index, index, False, None, None, ApplyError.WRONG_SHARD))
            continue
        rev = index + revision_offset
        if isinstance(cmd, Put | Delete | Cas):
            result = _apply_one(txn, index, cmd, rev)
        else:
            result = apply_lease(txn, index, rev, cmd, owns)
        if cid:
            txn.session_record((cid, cmd.incarnation), cmd.seq, result, now)
        out.append(result)
    return out


def advance_clock(txn: KVTxn, time_ms: int) -> int:
    """Move log time to ``time_ms`` if that is later; returns log time. Call for every
    entry that carries a stamp."""
    now = txn.clock()
    if time_ms > now:
        txn.set_clock(time_ms)
        return time_ms
    return now


def advance_applied_time(txn: KVTxn, stamp: int) -> int:
    """The time of a batch entry stamped ``stamp`` (0: unstamped), made the applied
    time; call once for every batch entry, in log order, before its commands apply."""
    t = max(stamp, txn.applied_time() + 1)
    txn.set_applied_time(t)
    return t


def stored(result: ApplyResult) -> ApplyResult:
    """What a session keeps of an answer: everything but the values."""
    return ApplyResult(result.index, result.revision, result.ok, None, None, result.error)


def _apply_one(txn: KVTxn, index: int, cmd: KeyCommand, rev: int) -> ApplyResult:
    if len(cmd.key) > MAX_KEY_SIZE:
        return ApplyResult(index, rev, False, None, None, ApplyError.KEY_TOO_LARGE)
    if not isinstance(cmd, Delete) and lease_missing(txn, cmd.lease):
        return ApplyResult(index, rev, False, None, None, ApplyError.LEASE_NOT_FOUND)
    prev = txn.get(cmd.key)
    if isinstance(cmd, Put):
        kv = _written(cmd.key, cmd.value, prev, rev)
        txn.put(kv)
        reattach(txn, cmd.key, cmd.lease)
        return ApplyResult(index, rev, True, prev, kv)
    if isinstance(cmd, Delete):
        if prev is not None:
            txn.delete(cmd.key)
            reattach(txn, cmd.key, 0)
        return ApplyResult(index, rev, prev is not None, prev, None)
    if not _compare(cmd, prev):
        return ApplyResult(index, rev, False, prev, prev)
    if cmd.new_value is None:
        if prev is not None:
            txn.delete(cmd.key)
            reattach(txn, cmd.key, 0)
        return ApplyResult(index, rev, True, prev, None)
    kv = _written(cmd.key, cmd.new_value, prev, rev)
    txn.put(kv)
    reattach(txn, cmd.key, cmd.lease)
    return ApplyResult(index, rev, True, prev, kv)


def _written(key: bytes, value: bytes, prev: KeyValue | None, index: int) -> KeyValue:
    if prev is None:
        return KeyValue(key, value, 1, index, index)
    return KeyValue(key, value, prev.version + 1, prev.create_revision, index)


def _compare(cmd: Cas, cur: KeyValue | None) -> bool:
    if cmd.expected_version is not None:
        version = cur.version if cur is not None else 0
        if version != cmd.expected_version:
            return False
    if cmd.expected_value is not None:
        return cur is not None and cur.value == cmd.expected_value
    return True


@dataclass(slots=True)
class _MemSession:
    state: SessionState
    results: dict[int, ApplyResult]


class MemoryKV:
    """The in-memory twin of the LMDB state machine tables (reference model in tests).
    Drops forgotten sessions and expired sessions' outcomes after every entry (storage
    does it a bit at a time)."""

    def __init__(self) -> None:
        self.data: dict[bytes, KeyValue] = {}
        self.sessions: dict[SessionId, _MemSession] = {}
        self.leases: dict[int, LeaseRecord] = {}
        self.lease_keys: dict[int, set[bytes]] = {}
        self.key_leases: dict[bytes, int] = {}
        self.applied = 0
        self.now_ms = 0
        self.time = 0

    def apply(
        self, index: int, commands: Sequence[Command], time_ms: int = 0, stamp: int = 0
    ) -> list[ApplyResult]:
        """Apply one batch entry's commands (``apply(index, [])``: a batch of none)."""
        t = advance_applied_time(self, stamp)
        results = [
            dataclasses.replace(r, time=t)
            for r in apply_commands(self, index, commands, time_ms=time_ms)
        ]
        self.skip(index)
        return results

    def skip(self, index: int) -> None:
        """Pass entry ``index`` that holds no batch (a NOOP, a conf change)."""
        for sid, m in list(self.sessions.items()):
            if m.state.forgotten(index, self.now_ms):
                del self.sessions[sid]
            elif m.state.expired(index, self.now_ms):
                m.results.clear()
        self.applied = index

    def scan(self, start: bytes, end: bytes = b"", limit: int = 0) -> list[KeyValue]:
        keys = sorted(self.data)
        lo = bisect.bisect_left(keys, start)
        hi = bisect.bisect_left(keys, end) if end else len(keys)
        picked = keys[lo:hi][:limit] if limit > 0 else keys[lo:hi]
        return [self.data[k] for k in picked]

    # -- KVTxn --------------------------------------------------------------
    def get(self, key: bytes) -> KeyValue | None:
        return self.data.get(key)

    def put(self, kv: KeyValue) -> None:
        self.data[kv.key] = kv

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)

    def clock(self) -> int:
        return self.now_ms

    def set_clock(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def applied_time(self) -> int:
        return self.time

    def set_applied_time(self, t: int) -> None:
        self.time = t

    def session(self, sid: SessionId) -> SessionState | None:
        m = self.sessions.get(sid)
        return None if m is None else m.state

    def session_result(self, sid: SessionId, seq: int) -> ApplyResult | None:
        m = self.sessions.get(sid)
        return None if m is None else m.results.get(seq)

    def session_record(self, sid: SessionId, seq: int, result: ApplyResult, now_ms: int) -> None:
        m = self.sessions.get(sid)
        last = max(seq, m.state.last_seq) if m is not None else seq
        state = SessionState(last, result.index, now_ms)
        if m is None:
            m = self.sessions[sid] = _MemSession(state, {})
        m.state = state
        m.results[seq] = stored(result)
        floor = last - SESSION_WINDOW
        for old in [q for q in m.results if q <= floor]:
            del m.results[old]

    def session_drop(self, sid: SessionId) -> None:
        self.sessions.pop(sid, None)

    # -- LeaseTxn -----------------------------------------------------------
    def lease(self, lease: int) -> LeaseRecord | None:
        return self.leases.get(lease)

    def set_lease(self, lease: int, record: LeaseRecord) -> None:
        self.leases[lease] = record

    def drop_lease(self, lease: int) -> list[bytes]:
        self.leases.pop(lease, None)
        keys = sorted(self.lease_keys.pop(lease, set()))
        for k in keys:
            del self.key_leases[k]
        return keys

    def has_leases(self) -> bool:
        return bool(self.leases)

    def key_lease(self, key: bytes) -> int:
        return self.key_leases.get(key, 0)

    def attach(self, key: bytes, lease: int) -> None:
        old = self.key_leases.pop(key, 0)
        if old:
            self.lease_keys[old].discard(key)
        if lease:
            self.key_leases[key] = lease
            self.lease_keys.setdefault(lease, set()).add(key)
