"""A client's session: exactly-once write seqs and the causal token of the read modes.

Rules:
- Seqs are handed out in a window (WRITE_WINDOW, half the node's session window): a new
  write waits while it would be that far past the oldest write in flight, so no seq in
  use can fall out of the session window however many writes one client has going.
- The causal token is one hybrid logical clock time (docs/sharding.md), the highest
  ``causal_time`` of any answer this client got: a write's is at or above its entry's
  time, a read's is the applied time it reflects. Causal reads and every write carry it
  (Op.causal_time): a replica serves a causal read only once its group's applied time
  reaches it, and a leader stamps a write above it. So one number gives the four
  session guarantees across replicas and across shards: it survives splits and merges
  (a new group inherits its parent's time, a merged one takes the later of both) and
  orders writes across shards (monotonic writes, writes-follow-reads).
"""

from __future__ import annotations

import asyncio

from kvstore._pb import kv_pb2
from kvstore.client._attempts import renumber, seq_of

WRITE_WINDOW = 512
"""Writes one client has in flight at most: half the node's session window
(kvstore.statemachine.apply.SESSION_WINDOW, 1024), so a write's seq is always one the
session still remembers or can take."""

READ_MODES = {
    "strong": kv_pb2.READ_MODE_STRONG,
    "eventual": kv_pb2.READ_MODE_EVENTUAL,
    "causal": kv_pb2.READ_MODE_CAUSAL,
}


def read_mode(name: str) -> kv_pb2.ReadMode.ValueType:
    try:
        return READ_MODES[name]
    except KeyError:
        raise ValueError(
            f"read_mode must be one of {', '.join(READ_MODES)}, got {name!r}"
        ) from None


class Session:
    def __init__(self) -> None:
        self.token = 0
        """The causal token: the highest hybrid clock time written or observed."""
        self._next_seq = 1
        self._live: dict[int, None] = {}  # seqs in flight, oldest first
        self._window: asyncio.Condition | None = None

    # -- causal token -------------------------------------------------------------------
    def observe(self, hdr: kv_pb2.ResponseHeader) -> None:
        if hdr.causal_time > self.token:
            self.token = hdr.causal_time

    def carry(self, op: kv_pb2.Op, *, write: bool) -> None:
        """Put the token on ``op`` where it matters: writes and causal reads."""
        if write:
            op.causal_time = self.token
            return
        read = op.get if op.HasField("get") else op.scan if op.HasField("scan") else None
        if read is not None and read.read_mode == kv_pb2.READ_MODE_CAUSAL:
            op.causal_time = self.token

    # -- write seqs ---------------------------------------------------------------------
    async def take_seq(self, op: kv_pb2.Op) -> None:
        if self._window is None:
            self._window = asyncio.Condition()
        async with self._window:
            await self._window.wait_for(
                lambda: not self._live or self._next_seq - next(iter(self._live)) < WRITE_WINDOW
            )
            renumber(op, self._issue())

    def _issue(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        self._live[seq] = None
        return seq

    async def reissue_seq(self, op: kv_pb2.Op, deadline: float) -> bool:
        """A fresh seq for a write no attempt can have applied, taken in the window like
        a new write's: callers that retry through an election would otherwise hand out
        seqs without bound while an older write that may have applied waits for its
        answer, and that write's retry fell out of the node's session window ("may have
        applied before"). False: ``deadline`` (loop time) passed first."""
        await self.release_seq(op)
        try:
            await asyncio.wait_for(
                self.take_seq(op), max(0.0, deadline - asyncio.get_running_loop().time())
            )
        except TimeoutError:
            return False
        return True

    async def release_seq(self, op: kv_pb2.Op) -> None:
        self._live.pop(seq_of(op), None)
        assert self._window is not None
        async with self._window:
            self._window.notify_all()
