"""The client sessions a group holds, read back from LMDB rows or from MemoryKV, in one
comparable form: {(client_id, incarnation): (state, {seq: stored outcome})}.

LMDB may still hold sessions that were forgotten, and outcomes of sessions that expired
(the sweep deletes them a few at a time); they count as absent, as the state machine
treats them.
"""

from __future__ import annotations

from kvstore.statemachine import ApplyResult, MemoryKV, SessionId, SessionState
from kvstore.statemachine.records import (
    decode_clock,
    decode_result,
    decode_session,
    encode_clock,
    encode_result,
    encode_session,
)
from kvstore.storage import NodeStorage
from kvstore.storage.tables import GroupTables

Sessions = dict[SessionId, tuple[SessionState, dict[int, ApplyResult]]]
Clock = tuple[int, int]
"""(log time ms, applied time)."""


def _u64(b: bytes, at: int) -> int:
    return int.from_bytes(b[at : at + 8], "big")


def from_rows(rows: list[tuple[bytes, bytes]], applied: int) -> tuple[Clock, Sessions]:
    """(log clock, live sessions) of a group's raw session rows (a snapshot image's too)."""
    clock = (0, 0)
    out: Sessions = {}
    for key, record in rows:
        if not key:
            clock = decode_clock(record)
        elif _u64(key, 0) == 0:
            continue  # client id 0: leases (kvstore/storage/leases.py)
        elif len(key) == 16:
            out[_u64(key, 0), _u64(key, 8)] = (decode_session(record), {})
        else:
            assert len(key) == 24, key
            out[_u64(key, 0), _u64(key, 8)][1][_u64(key, 16)] = decode_result(record)
    return clock, _judged(out, applied, clock[0])


def _judged(out: Sessions, applied: int, now_ms: int) -> Sessions:
    """Forgotten sessions dropped, expired ones without their outcomes."""
    return {
        sid: (state, {} if state.expired(applied, now_ms) else results)
        for sid, (state, results) in out.items()
        if not state.forgotten(applied, now_ms)
    }


def stored(st: NodeStorage, group: int) -> tuple[Clock, Sessions]:
    with st.env.begin() as txn:
        rows = list(GroupTables(txn, st.dbs, group).raw_sessions())
    return from_rows(rows, st.kv(group).applied_index())


def model(m: MemoryKV) -> tuple[Clock, Sessions]:
    out = {sid: (s.state, dict(s.results)) for sid, s in m.sessions.items()}
    return (m.now_ms, m.time), _judged(out, m.applied, m.now_ms)


def rows(m: MemoryKV) -> list[tuple[bytes, bytes]]:
    """MemoryKV's sessions as the session rows of a snapshot image, in key order."""
    out = [(b"", encode_clock(m.now_ms, m.time))]
    for (client, inc), s in sorted(m.sessions.items()):
        sid = client.to_bytes(8, "big") + inc.to_bytes(8, "big")
        out.append((sid, encode_session(s.state)))
        for seq, r in sorted(s.results.items()):
            out.append((sid + seq.to_bytes(8, "big"), encode_result(r)))
    return out
