"""Waiter bookkeeping: entry packing, held replies, deadlines, failing everything once."""

from __future__ import annotations

import random

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.types import Config
from kvstore.node.errors import DeadlineOp, InternalOp, NotLeaderOp, OpError
from kvstore.node.pending import (
    Callback,
    GroupState,
    Inflight,
    Replies,
    Waiter,
    Write,
    pack_entries,
)
from kvstore.statemachine import Put


class Seen:
    def __init__(self) -> None:
        self.calls: list[tuple[object, OpError | None]] = []

    def cb(self) -> Callback[object]:
        return Callback(lambda r, e: self.calls.append((r, e)))


def _write(seen: Seen, size: int = 10, deadline: float = 100.0) -> Write:
    return Write(Put(b"k", b"v" * size), seen.cb(), deadline, 0.0)  # type: ignore[arg-type]


def test_pack_entries_caps_ops_and_bytes_and_skips_answered() -> None:
    seen = Seen()
    ws = [_write(seen) for _ in range(10)]
    assert [len(c) for c in pack_entries(ws, 4, 1 << 20)] == [4, 4, 2]
    big = [_write(seen, size=600) for _ in range(3)]
    assert [len(c) for c in pack_entries(big, 100, 1000)] == [1, 1, 1]
    ws[0].fut.set_result(None)
    assert sum(len(c) for c in pack_entries(ws, 100, 1 << 20)) == 9


def test_callback_fires_once_and_wraps_foreign_errors() -> None:
    seen = Seen()
    cb = seen.cb()
    cb.set_exception(ValueError("boom"))
    cb.set_result(1)
    assert len(seen.calls) == 1
    _, err = seen.calls[0]
    assert isinstance(err, InternalOp) and not err.definite


def test_callback_whose_reply_fails_is_called_again_with_an_internal_error() -> None:
    calls: list[tuple[object, OpError | None]] = []

    def fn(r: object, e: OpError | None) -> None:
        calls.append((r, e))
        if e is None:
            raise ValueError("damaged record")

    Callback(fn).set_result(1)
    assert len(calls) == 2 and calls[0] == (1, None)
    assert isinstance(calls[1][1], InternalOp) and "damaged record" in calls[1][1].message


def test_replies_are_held_until_flushed() -> None:
    seen = Seen()
    r = Replies()
    r.defer(seen.cb(), 7)
    r.defer(seen.cb(), DeadlineOp("late", definite=False))
    assert seen.calls == []
    r.flush()
    assert seen.calls[0] == (7, None) and isinstance(seen.calls[1][1], DeadlineOp)


def _group() -> GroupState:
    from kvstore.consensus import new_core

    core = new_core("raft", Config(id=1, rng=random.Random(1)), MemoryStorage(voters={1}))
    return GroupState(id=1, core=core, applied=0, compacted=0)


def test_expire_fails_late_writes_as_unknown_and_late_reads_as_definite() -> None:
    g = _group()
    seen = Seen()
    g.inflight[5] = Inflight(1, [_write(seen, deadline=1.0)], 1.0)
    g.inflight[6] = Inflight(1, [_write(seen, deadline=9.0)], 9.0)
    g.read_ctx[b"c"] = [Waiter(seen.cb(), 1.0)]  # type: ignore[arg-type]
    g.expire(now=2.0)
    assert list(g.inflight) == [6] and not g.read_ctx
    errors = [e for _, e in seen.calls]
    assert [type(e) for e in errors] == [DeadlineOp, DeadlineOp]
    assert errors[0] is not None and not errors[0].definite
    assert errors[1] is not None and errors[1].definite


def test_unconfirmed_reads_are_redirected_and_fail_all_answers_everyone() -> None:
    g = _group()
    seen = Seen()
    g.read_ctx[b"a"] = [Waiter(seen.cb(), 9.0)]  # type: ignore[arg-type]
    g.fail_unconfirmed_reads(NotLeaderOp("moved", definite=True, leader_id=2))
    assert not g.read_ctx and isinstance(seen.calls[0][1], NotLeaderOp)
    g.writes.append(_write(seen))
    g.inflight[3] = Inflight(1, [_write(seen)], 9.0)
    g.reads.append(Waiter(seen.cb(), 9.0))  # type: ignore[arg-type]
    g.fail_all(OpError("stop", definite=False))
    assert len(seen.calls) == 4 and not (g.writes or g.inflight or g.reads)
