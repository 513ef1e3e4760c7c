"""The leader's view of one acceptor's phase 2 progress (performs no I/O).

``match``: the acceptor holds the leader's value in every slot <= match (the
chosen prefix, then values accepted in the leader's ballot); it counts towards
choosing those slots. ``next``: the next slot to send.

States and their transitions (one table, ``TRANSITIONS``, with a row for every
state and event: an event that means nothing in a state, such as a snapshot
acknowledgement while probing, maps to None and changes nothing):
- PROBE: one ACCEPT in flight at a time; used after a gap or a restart.
- REPLICATE: ACCEPTs pipelined optimistically, at most ``max_msgs`` messages and
  ``max_bytes`` of values in flight.
- SNAPSHOT: the acceptor needs slots the leader compacted; a PAXOS_SNAPSHOT is
  in flight and nothing else is sent until it is acknowledged.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from kvstore.consensus.types import ConfState, PeerProgress


class State(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Event(enum.Enum):
    ACKED = "acked"
    """An ACCEPTED that advanced ``match``."""
    GAP = "gap"
    """The acceptor lacks slots before what we sent (it restarted or missed some)."""
    NEED_SNAPSHOT = "need_snapshot"
    SNAPSHOT_DONE = "snapshot_done"
    RESTARTED = "restarted"
    """A heartbeat answer shows less accepted than ``match``."""
    SNAPSHOT_LOST = "snapshot_lost"
    """No acknowledgement after ``election_tick`` heartbeat answers."""


TRANSITIONS: dict[tuple[State, Event], State | None] = {
    (State.PROBE, Event.ACKED): State.REPLICATE,
    (State.PROBE, Event.GAP): State.PROBE,
    (State.PROBE, Event.NEED_SNAPSHOT): State.SNAPSHOT,
    (State.PROBE, Event.SNAPSHOT_DONE): None,
    (State.PROBE, Event.RESTARTED): State.PROBE,
    (State.PROBE, Event.SNAPSHOT_LOST): None,
    (State.REPLICATE, Event.ACKED): State.REPLICATE,
    (State.REPLICATE, Event.GAP): State.PROBE,
    (State.REPLICATE, Event.NEED_SNAPSHOT): State.SNAPSHOT,
    (State.REPLICATE, Event.SNAPSHOT_DONE): None,
    (State.REPLICATE, Event.RESTARTED): State.PROBE,
    (State.REPLICATE, Event.SNAPSHOT_LOST): None,
    (State.SNAPSHOT, Event.ACKED): State.SNAPSHOT,
    (State.SNAPSHOT, Event.GAP): State.SNAPSHOT,
    (State.SNAPSHOT, Event.NEED_SNAPSHOT): State.SNAPSHOT,
    (State.SNAPSHOT, Event.SNAPSHOT_DONE): State.PROBE,
    (State.SNAPSHOT, Event.RESTARTED): State.SNAPSHOT,
    (State.SNAPSHOT, Event.SNAPSHOT_LOST): State.PROBE,
}


@dataclass(slots=True, kw_only=True)
class Progress:
    match: int = 0
    next: int = 1
    state: State = State.PROBE
    probe_sent: bool = False
    """PROBE: an ACCEPT is in flight; wait for its answer or a heartbeat answer."""
    inflight: deque[tuple[int, int]] = field(default_factory=deque)
    """REPLICATE: (last slot, bytes) of each ACCEPT in flight, ascending."""
    inflight_bytes: int = 0
    pending_snapshot: int = 0
    reaccept_to: int = 0
    """After phase 1: its promise reported our values in every slot from the
    recovered commit + 1 through this one (a REACCEPT can cover them)."""
    snapshot_wait: int = 0
    behind_beats: int = 0
    """Heartbeat answers in a row showing less than we sent (lost ACCEPTs)."""
    recent_active: bool = True
    """Heard from since the last quorum check."""
    read_ack: int = 0
    """Highest read round this acceptor confirmed."""

    def on(self, event: Event) -> None:
        to = TRANSITIONS[(self.state, event)]
        if to is None:
            return  # no such event in this state: a late or duplicated answer
        self.state = to
        self.probe_sent = False
        self.snapshot_wait = 0
        self.behind_beats = 0
        if self.state is not State.REPLICATE:
            self.inflight.clear()
            self.inflight_bytes = 0

    def paused(self, max_msgs: int, max_bytes: int) -> bool:
        if self.state is State.PROBE:
            return self.probe_sent
        if self.state is State.REPLICATE:
            return len(self.inflight) >= max_msgs or self.inflight_bytes >= max_bytes
        return True

    def sent(self, last: int, size: int) -> None:
        """An ACCEPT ending at ``last`` carrying ``size`` bytes of values was sent."""
        if self.state is State.REPLICATE:
            self.inflight.append((last, size))
            self.inflight_bytes += size
            self.next = last + 1
        else:
            self.probe_sent = True

    def acked(self, index: int) -> bool:
        """The acceptor holds our values through ``index``; True if ``match`` grew."""
        grew = index > self.match
        if grew:
            self.match = index
            self.behind_beats = 0
        if self.next <= index:
            self.next = index + 1
        while self.inflight and self.inflight[0][0] <= index:
            self.inflight_bytes -= self.inflight.popleft()[1]
        return grew


def peer_progress(
    progress: dict[int, Progress], me: int, last_index: int, conf: ConfState
) -> tuple[PeerProgress, ...]:
    """Every member's progress as ``Status.progress`` reports it, by id (the leader
    itself holds its whole log), as the Raft core reports it."""
    out = [
        PeerProgress(
            id=n,
            match=pr.match,
            next=pr.next,
            state=pr.state.value,
            inflight=len(pr.inflight),
            learner=n in conf.learners,
        )
        for n, pr in progress.items()
    ]
    out.append(
        PeerProgress(
            id=me,
            match=last_index,
            next=last_index + 1,
            state=State.REPLICATE.value,
            inflight=0,
            learner=me in conf.learners,
        )
    )
    return tuple(sorted(out, key=lambda p: p.id))
