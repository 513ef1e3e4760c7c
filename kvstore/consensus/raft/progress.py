"""A leader's view of one follower's replication, and its in-flight window.

Performs no I/O. Every state change of a ``Progress`` goes through ONE table,
``TRANSITIONS[(state, event)]``; the methods below only record the event's data
and run the entry action of the state the table names. Invariants:
``match < next``; in REPLICATE the in-flight window holds the last index of each
unacknowledged append, oldest first; in SNAPSHOT nothing is sent.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field


class ProgressState(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; the table lookup is on the hot path

    PROBE = "probe"
    """Unsure where the follower's log ends: one append per heartbeat until it answers."""
    REPLICATE = "replicate"
    """Follower known to match: stream appends optimistically, capped by ``Inflights``."""
    SNAPSHOT = "snapshot"
    """Follower needs entries we compacted; a snapshot is on its way, send nothing."""


class ProgressEvent(enum.Enum):
    __hash__ = object.__hash__

    SENT_ENTRIES = "sent_entries"
    """An append left for the follower."""
    ACK = "ack"
    """The follower acknowledged entries up to a new match."""
    REJECT = "reject"
    """The follower rejected an append (its log differs at the probed index)."""
    NEED_SNAPSHOT = "need_snapshot"
    """The next entry to send was compacted; a snapshot was sent."""
    SNAPSHOT_DONE = "snapshot_done"
    """The follower's match reached a point our log can continue from."""
    SNAPSHOT_FAILED = "snapshot_failed"
    """No answer to the snapshot within the retry timeout: assume it was lost."""
    HEARTBEAT_RESP = "heartbeat_resp"
    """The follower is alive; a paused probe may send again."""
    UNREACHABLE = "unreachable"
    """The transport could not send to the follower (etcd's ReportUnreachable): what is
    in flight, a snapshot included, may be lost; probe once it answers a heartbeat."""
    SNAPSHOT_SENT = "snapshot_sent"
    """The transport delivered the snapshot (etcd's ReportSnapshot, finished): probe
    after it, once the follower answers."""


P, R, S = ProgressState.PROBE, ProgressState.REPLICATE, ProgressState.SNAPSHOT
E = ProgressEvent

TRANSITIONS: dict[tuple[ProgressState, ProgressEvent], ProgressState] = {
    (P, E.SENT_ENTRIES): P,
    (R, E.SENT_ENTRIES): R,
    (S, E.SENT_ENTRIES): S,
    (P, E.ACK): R,
    (R, E.ACK): R,
    (S, E.ACK): S,
    (P, E.REJECT): P,
    (R, E.REJECT): P,
    (S, E.REJECT): S,
    (P, E.NEED_SNAPSHOT): S,
    (R, E.NEED_SNAPSHOT): S,
    (S, E.NEED_SNAPSHOT): S,
    (P, E.SNAPSHOT_DONE): P,
    (R, E.SNAPSHOT_DONE): R,
    (S, E.SNAPSHOT_DONE): R,
    (P, E.SNAPSHOT_FAILED): P,
    (R, E.SNAPSHOT_FAILED): R,
    (S, E.SNAPSHOT_FAILED): P,
    (P, E.HEARTBEAT_RESP): P,
    (R, E.HEARTBEAT_RESP): R,
    (S, E.HEARTBEAT_RESP): S,
    (P, E.UNREACHABLE): P,
    (R, E.UNREACHABLE): P,
    (S, E.UNREACHABLE): P,
    (P, E.SNAPSHOT_SENT): P,
    (R, E.SNAPSHOT_SENT): R,
    (S, E.SNAPSHOT_SENT): P,
}
"""(state, event) -> next state; complete over every pair (a test checks it)."""


@dataclass(slots=True)
class Inflights:
    """Sliding window of unacknowledged appends, capped by count and by bytes."""

    max_count: int
    max_bytes: int
    _items: deque[tuple[int, int]] = field(default_factory=deque)
    bytes: int = 0

    def add(self, index: int, size: int) -> None:
        self._items.append((index, size))
        self.bytes += size

    def free_le(self, index: int) -> None:
        """Release every append whose last index is <= ``index`` (acknowledged)."""
        items = self._items
        while items and items[0][0] <= index:
            self.bytes -= items.popleft()[1]

    def full(self) -> bool:
        return len(self._items) >= self.max_count or self.bytes >= self.max_bytes

    def count(self) -> int:
        return len(self._items)

    def reset(self) -> None:
        self._items.clear()
        self.bytes = 0


@dataclass(slots=True)
class Progress:
    match: int
    next: int
    inflights: Inflights
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    """PROBE: an append is outstanding; wait for its answer or the next heartbeat."""
    pending_snapshot: int = 0
    """SNAPSHOT: index of the snapshot sent."""
    snapshot_checks: int = 0
    """SNAPSHOT: election timeouts elapsed since the snapshot was sent."""
    recent_active: bool = False
    """Heard from in the current CheckQuorum window."""
    is_learner: bool = False

    # -- the one place states change ---------------------------------------
    def _fire(self, event: ProgressEvent) -> None:
        old = self.state
        new = TRANSITIONS[(old, event)]
        if new is old:
            return
        self.state = new
        self.inflights.reset()
        self.probe_sent = False
        if new is ProgressState.PROBE:
            # Leaving SNAPSHOT: the follower has at least the snapshot once it applies it.
            self.next = max(self.match + 1, self.pending_snapshot + 1)
            self.pending_snapshot = 0
        elif new is ProgressState.REPLICATE:
            self.next = self.match + 1
            self.pending_snapshot = 0
        else:
            self.snapshot_checks = 0

    # -- events -----------------------------------------------------------------
    def sent_entries(self, count: int, size: int) -> None:
        """An append with ``count`` entries starting at ``next`` was sent."""
        if self.state is ProgressState.REPLICATE:
            if count:
                last = self.next + count - 1
                self.next = last + 1
                self.inflights.add(last, size)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True
        self._fire(ProgressEvent.SENT_ENTRIES)

    def ack(self, index: int) -> bool:
        """The follower stores our log up to ``index``. False if that is stale news."""
        if index <= self.match:
            # Still a sign of life: a paused probe may continue.
            self.probe_sent = False
            return False
        self.match = index
        self.next = max(self.next, index + 1)
        self.probe_sent = False
        if self.state is ProgressState.REPLICATE:
            self.inflights.free_le(index)
        self._fire(ProgressEvent.ACK)
        return True

    def reject(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected the append whose previous index was ``rejected``.
        Returns False when the rejection is stale (answers an older append)."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self._fire(ProgressEvent.REJECT)  # -> PROBE at match + 1
            return True
        if self.state is ProgressState.SNAPSHOT or self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        self._fire(ProgressEvent.REJECT)
        return True

    def lost_log(self, last: int) -> None:
        """The follower's log ends at ``last``, below ``match``: it lost acknowledged
        entries. Probe from there (a snapshot in flight goes on: it brings them back)."""
        self.match = last
        if self.state is not ProgressState.SNAPSHOT:
            self._fire(ProgressEvent.REJECT)
            self.next = last + 1
            self.probe_sent = False

    def need_snapshot(self, index: int) -> None:
        self.pending_snapshot = index
        self._fire(ProgressEvent.NEED_SNAPSHOT)
        self.pending_snapshot = index

    def snapshot_done(self) -> None:
        self._fire(ProgressEvent.SNAPSHOT_DONE)

    def snapshot_failed(self) -> None:
        self._fire(ProgressEvent.SNAPSHOT_FAILED)

    def snapshot_reported(self, ok: bool) -> None:
        """The transport's word on the snapshot sent: delivered (probe after it) or not
        (forget it, probe from ``match``). Either way wait for a heartbeat answer."""
        if ok:
            self._fire(ProgressEvent.SNAPSHOT_SENT)
        else:
            self.pending_snapshot = 0  # so the probe starts at match + 1, not after it
            self._fire(ProgressEvent.SNAPSHOT_FAILED)
        if self.state is ProgressState.PROBE:
            self.probe_sent = True

    def unreachable(self) -> None:
        self._fire(ProgressEvent.UNREACHABLE)
        self.probe_sent = True

    def heartbeat_resp(self) -> None:
        self.probe_sent = False
        self._fire(ProgressEvent.HEARTBEAT_RESP)

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True
