"""The distinguished proposer's volatile state: phase 1 (Candidate) and phase 2
(Leader). Performs no I/O; nothing here is persisted (a restarted node is a
follower and must run phase 1 again with a higher ballot).

Invariants:
- a Candidate counts a promise only for its own ballot, and becomes Leader only
  with promises from a majority of every configuration in the chain (its own and
  the conf changes the promises reveal) and a complete recovery;
- a Leader proposes at most one value per slot in its ballot, and never changes
  a slot of its log once it proposed it (acceptors rely on it for
  ``accepted_through``);
- a read is confirmed only by acceptors answering a heartbeat round sent after
  the read was queued, while still holding the leader's ballot.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from kvstore.consensus.paxos.progress import Progress
from kvstore.consensus.paxos.recovery import Promise


@dataclass(slots=True, kw_only=True)
class Candidate:
    ballot: int
    start: int
    """The first slot asked in PREPARE: our commit + 1 when the round began."""
    promises: dict[int, Promise] = field(default_factory=dict)
    transfer: bool = False


@dataclass(slots=True, kw_only=True)
class PendingRead:
    seq: int
    index: int
    ctx: bytes
    requester: int


@dataclass(slots=True, kw_only=True)
class Leader:
    ballot: int
    progress: dict[int, Progress] = field(default_factory=dict)
    """Every other member (voters and learners of every config in the chain)."""
    self_match: int = 0
    """Our own log is durable through this slot."""
    recovered_commit: int = 0
    """Commit right after phase 1: slots above it were proposed again in our ballot."""
    takeover_last: int = 0
    """Last slot recovered in phase 1: reads wait until it is chosen, so a read
    index covers every value a previous leader may have had chosen."""
    reads: deque[PendingRead] = field(default_factory=deque)
    deferred_reads: list[tuple[bytes, int]] = field(default_factory=list)
    read_seq: int = 0
    read_round_due: bool = False
    heartbeat_elapsed: int = 0
    transfer_to: int = 0
    transfer_elapsed: int = 0
    transfer_sent: bool = False
    uncommitted: deque[tuple[int, int]] = field(default_factory=deque)
    """(slot, size) of our own proposals not yet chosen, for the byte cap."""
    uncommitted_bytes: int = 0
    commit_sent: dict[int, int] = field(default_factory=dict)
    """Highest commit index told to each peer."""

    def add_read(self, index: int, ctx: bytes, requester: int) -> None:
        self.read_seq += 1
        self.reads.append(PendingRead(seq=self.read_seq, index=index, ctx=ctx, requester=requester))
        self.read_round_due = True

    def pop_confirmed(self, seq: int) -> list[PendingRead]:
        out: list[PendingRead] = []
        while self.reads and self.reads[0].seq <= seq:
            out.append(self.reads.popleft())
        return out

    def track(self, index: int, size: int) -> None:
        self.uncommitted.append((index, size))
        self.uncommitted_bytes += size

    def chosen_through(self, commit: int) -> None:
        while self.uncommitted and self.uncommitted[0][0] <= commit:
            self.uncommitted_bytes -= self.uncommitted.popleft()[1]
