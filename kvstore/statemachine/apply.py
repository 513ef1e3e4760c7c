"""Applies commands to a key-value store with exactly-once client sessions.

Rule: the outcome depends only on the store's contents, the entry index and the
commands, so every replica that applies the same log reaches the same state and answers.

Sessions (Raft thesis 6.3): a command with ``client_id != 0`` records its result under
(client_id, seq). A retried seq gets the recorded result back and does not apply again.
Each client keeps the last SESSION_WINDOW seqs; a seq at or below ``last - SESSION_WINDOW``
with no record may have applied before, so it is refused (ApplyError.SESSION_EXPIRED).
Seqs inside the window may arrive out of order (pipelined clients); each applies once.

Idle clients expire so sessions do not grow forever: at every entry whose index is a
multiple of SESSION_SWEEP_EVERY, clients whose newest result is more than
SESSION_IDLE_ENTRIES entries old are forgotten (``end_entry``). The sweep points are log
positions, so every replica forgets the same clients at the same index. A retry that
arrives after its client expired would apply again: the idle bound is kept far above any
client's retry deadline (at 10,000 entries/s it is still 10 s).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

from kvstore.statemachine.commands import Cas, Command, Delete, Put
from kvstore.statemachine.types import ApplyError, ApplyResult, KeyValue

SESSION_WINDOW = 1024
"""Seqs per client whose results are kept: must exceed a client's requests in flight."""

SESSION_SWEEP_EVERY = 4096
"""Entries between two sweeps for idle sessions."""

SESSION_IDLE_ENTRIES = 100_000
"""A client with no command applied in this many entries is forgotten at the next sweep."""

MAX_KEY_SIZE = 510
"""Longest key in bytes: LMDB's 511-byte key limit minus the 1-byte data prefix (user keys
are stored under their own bytes, not under a group: see kvstore.storage.keys)."""


class KVTxn(Protocol):
    """The store one apply runs against (an LMDB write txn, or MemoryKV)."""

    def get(self, key: bytes) -> KeyValue | None: ...

    def put(self, kv: KeyValue) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def session_result(self, client_id: int, seq: int) -> ApplyResult | None: ...

    def session_last_seq(self, client_id: int) -> int:
        """Highest recorded seq of the client (0 if none)."""
        ...

    def session_record(self, client_id: int, seq: int, result: ApplyResult) -> None:
        """Record the result and forget seqs <= max(last, seq) - SESSION_WINDOW."""
        ...

    def expire_sessions(self, idle_before: int) -> int:
        """Forget clients whose highest-seq result is from an entry <= ``idle_before``."""
        ...


def apply_commands(
    txn: KVTxn,
    index: int,
    commands: Sequence[Command],
    owns: Callable[[bytes], bool] | None = None,
) -> list[ApplyResult]:
    """Apply one entry's commands in order; one result per command. ``owns``: the
    group's key range at this index (None: every key); a command on another key applies
    as nothing (WRONG_SHARD), unless its session already holds its answer."""
    out: list[ApplyResult] = []
    for cmd in commands:
        cid = cmd.client_id
        if cid:
            seen = txn.session_result(cid, cmd.seq)
            if seen is not None:
                # The stored answer, stamped with the entry that carries the retry: callers
                # match results to commands by entry index and position, so an answer
                # still naming the original entry would shift every later command's result.
                out.append(dataclasses.replace(seen, index=index))
                continue
            if cmd.seq <= txn.session_last_seq(cid) - SESSION_WINDOW:
                out.append(ApplyResult(index, index, False, None, None, ApplyError.SESSION_EXPIRED))
                continue
        if owns is not None and not owns(cmd.key):
            out.append(ApplyResult(index, index, False, None, None, ApplyError.WRONG_SHARD))
            continue
        result = _apply_one(txn, index, cmd)
        if cid:
            txn.session_record(cid, cmd.seq, result)
        out.append(result)
    return out


def end_entry(txn: KVTxn, index: int) -> None:
    """Call after applying the entry at ``index``, whatever its type (NOOPs included):
    runs the idle-session sweep at its fixed log positions."""
    if index % SESSION_SWEEP_EVERY == 0 and index > SESSION_IDLE_ENTRIES:
        txn.expire_sessions(index - SESSION_IDLE_ENTRIES)


def _apply_one(txn: KVTxn, index: int, cmd: Command) -> ApplyResult:
    if len(cmd.key) > MAX_KEY_SIZE:
        return ApplyResult(index, index, False, None, None, ApplyError.KEY_TOO_LARGE)
    prev = txn.get(cmd.key)
    if isinstance(cmd, Put):
        kv = _written(cmd.key, cmd.value, prev, index)
        txn.put(kv)
        return ApplyResult(index, index, True, prev, kv)
    if isinstance(cmd, Delete):
        if prev is not None:
            txn.delete(cmd.key)
        return ApplyResult(index, index, prev is not None, prev, None)
    assert isinstance(cmd, Cas)
    if not _compare(cmd, prev):
        return ApplyResult(index, index, False, prev, prev)
    if cmd.new_value is None:
        if prev is not None:
            txn.delete(cmd.key)
        return ApplyResult(index, index, True, prev, None)
    kv = _written(cmd.key, cmd.new_value, prev, index)
    txn.put(kv)
    return ApplyResult(index, index, True, prev, kv)


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


class MemoryKV:
    """The in-memory twin of the LMDB state machine tables (reference model in tests)."""

    def __init__(self) -> None:
        self.data: dict[bytes, KeyValue] = {}
        self.sessions: dict[int, dict[int, ApplyResult]] = {}
        self.applied = 0

    def apply(self, index: int, commands: Sequence[Command]) -> list[ApplyResult]:
        """Apply one entry's commands (use ``apply(index, [])`` for NOOP entries)."""
        results = apply_commands(self, index, commands)
        end_entry(self, index)
        self.applied = index
        return results

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

    def session_result(self, client_id: int, seq: int) -> ApplyResult | None:
        return self.sessions.get(client_id, {}).get(seq)

    def session_last_seq(self, client_id: int) -> int:
        return max(self.sessions.get(client_id, ()), default=0)

    def session_record(self, client_id: int, seq: int, result: ApplyResult) -> None:
        s = self.sessions.setdefault(client_id, {})
        s[seq] = result
        floor = max(s) - SESSION_WINDOW
        for old in [q for q in s if q <= floor]:
            del s[old]

    def expire_sessions(self, idle_before: int) -> int:
        idle = [c for c, s in self.sessions.items() if s[max(s)].index <= idle_before]
        for c in idle:
            del self.sessions[c]
        return len(idle)
