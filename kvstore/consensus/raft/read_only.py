"""Pending ReadIndex requests on a leader (Raft thesis section 6.4); performs no I/O.

Invariant: requests are confirmed in arrival order. A heartbeat round that a quorum
acknowledges for request R also proves leadership for every request queued before R,
so confirming R releases R and all older ones. That is also why every regular heartbeat
carries the newest pending context (``last_pending_ctx``, as etcd does): a round lost to
the network is retried by the next heartbeat instead of waiting for another read.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class ReadRequest:
    index: int
    """The leader's commit index when the request arrived: the read's index."""
    ctx: bytes
    from_: int
    """Who asked: the leader itself, or the follower that forwarded it."""
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    def __init__(self) -> None:
        self.pending: dict[bytes, ReadRequest] = {}
        self.queue: deque[bytes] = deque()

    def add(self, index: int, ctx: bytes, from_: int, self_id: int) -> bool:
        """Queue a request; False if one with this ctx is already pending (it will
        answer for both: the caller keys its waiters by ctx)."""
        if ctx in self.pending:
            return False
        self.pending[ctx] = ReadRequest(index=index, ctx=ctx, from_=from_, acks={self_id})
        self.queue.append(ctx)
        return True

    def last_pending_ctx(self) -> bytes:
        """The newest pending request's context (b"" when none is pending)."""
        return self.queue[-1] if self.queue else b""

    def ack(self, from_: int, ctx: bytes) -> set[int] | None:
        req = self.pending.get(ctx)
        if req is None:
            return None
        req.acks.add(from_)
        return req.acks

    def advance(self, ctx: bytes) -> list[ReadRequest]:
        """Release ``ctx`` and every request queued before it."""
        if ctx not in self.pending:
            return []
        out = []
        while self.queue:
            c = self.queue.popleft()
            out.append(self.pending.pop(c))
            if c == ctx:
                break
        return out
