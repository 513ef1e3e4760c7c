"""One attempt of a client call: when it ends, what a retry changes, what gets counted.

Rules this module keeps: an attempt ends when its node has been silent (nothing at all
received on the stream) for ``silence`` seconds, or at the time the node was given; a
node that keeps answering other ops is slow, not gone. A retry of a write that certainly
did not apply may take a fresh seq (``renumber``); every retry is counted by reason.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kvstore._pb import kv_pb2
from kvstore.client._stream import BatchStream


class RetryStats:
    """What a client retried: ``requests`` calls needed more than one attempt, and
    ``reasons`` counts the failed attempts by why (the attempt's answer, or its absence)."""

    def __init__(self) -> None:
        self.requests = 0
        self.reasons: dict[str, int] = {}

    def count(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, **self.reasons}


def seq_of(op: kv_pb2.Op) -> int:
    kind = op.WhichOneof("request")
    return int(getattr(op, kind).seq) if kind in _SEQUENCED else 0


def incarnation_of(op: kv_pb2.Op) -> int:
    kind = op.WhichOneof("request")
    return int(getattr(op, kind).incarnation) if kind in _SEQUENCED else 0


def set_incarnation(op: kv_pb2.Op, incarnation: int) -> None:
    kind = op.WhichOneof("request")
    if kind in _SEQUENCED:
        getattr(op, kind).incarnation = incarnation


def renumber(op: kv_pb2.Op, seq: int) -> None:
    kind = op.WhichOneof("request")
    if kind == "put":
        op.put.seq = seq
    elif kind == "delete":
        op.delete.seq = seq
    elif kind == "cas":
        op.cas.seq = seq
    elif kind == "lease_grant":
        op.lease_grant.seq = seq
    elif kind == "lease_revoke":
        op.lease_revoke.seq = seq


_SEQUENCED = ("put", "delete", "cas", "lease_grant", "lease_revoke")


class Watch:
    """Ends one attempt: fails ``fut`` with TimeoutError once the stream has been silent
    for ``silence`` seconds since ``start`` (nothing received at all: the node is not
    answering), or at ``hard`` (the node should have answered by then). A node that is
    answering other ops is slow, not gone, and keeps the op until ``hard``. One timer per
    attempt, re-armed only while a live node is slow: cheaper per op than wait_for."""

    __slots__ = ("_fut", "_handle", "_hard", "_loop", "_silence", "_start", "_stream", "silent")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fut: asyncio.Future[Any],
        stream: BatchStream,
        start: float,
        silence: float,
        hard: float,
    ) -> None:
        self._loop, self._fut, self._stream = loop, fut, stream
        self._start, self._silence, self._hard = start, silence, hard
        self.silent = False
        self._handle = loop.call_at(min(start + silence, hard), self._check)

    def _check(self) -> None:
        if self._fut.done():
            return
        now = self._loop.time()
        quiet_since = max(self._start, self._stream.heard_at)
        self.silent = now - quiet_since >= self._silence
        if self.silent or now >= self._hard:
            self._fut.set_exception(TimeoutError())
        else:
            self._handle = self._loop.call_at(
                min(quiet_since + self._silence, self._hard), self._check
            )

    def cancel(self) -> None:
        self._handle.cancel()
