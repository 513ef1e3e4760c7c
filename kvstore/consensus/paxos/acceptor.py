"""The acceptor's rules (Paxos phase 1b and 2b), over a SlotLog. Performs no I/O.

State: ``promised`` (persisted as HardState.term), ``commit`` (persisted as
HardState.commit: every slot <= commit holds its chosen value) and the log.

Rules kept here:
- ``promised`` never decreases; a PREPARE or ACCEPT below it is refused.
- A promise reports every value accepted from the prepared slot on (with the
  ballot it was accepted in); the caller persists the promise (and any accepted
  value) before the answer leaves (the Ready rule).
- An accepted value is replaced only by a value of a higher or equal ballot;
  chosen slots (<= commit) never change.
- ``accepted_through`` (volatile) is the prefix of slots holding the current
  leader's values: the chosen prefix, then what that leader sent contiguously in
  its ballot. It resets to ``commit`` whenever the promise changes, and the
  acceptor only learns a commit within it (so it applies the chosen values, never
  an older value that lost).
"""

from __future__ import annotations

import enum

from kvstore.consensus.paxos import value
from kvstore.consensus.paxos.log import SlotLog
from kvstore.consensus.paxos.recovery import Promise
from kvstore.consensus.types import Entry, Snapshot


class Outcome(enum.Enum):
    OK = "ok"
    STALE_BALLOT = "stale_ballot"
    GAP = "gap"


class Acceptor:
    def __init__(self, log: SlotLog, promised: int, commit: int) -> None:
        self.log = log
        self.promised = promised
        self.commit = max(commit, log.snapshot_index())
        self.accepted_through = self.commit

    def promise(self, ballot: int) -> bool:
        """Phase 1b: promise ``ballot`` unless a higher one is promised."""
        if ballot < self.promised:
            return False
        if ballot > self.promised:
            self.promised = ballot
            self.accepted_through = self.commit
        return True

    def report(self, start: int) -> Promise:
        """What a promise carries: accepted values from ``start`` (or our first slot)."""
        lo = max(start, self.log.first_index())
        return Promise(
            commit=self.commit,
            entries=tuple(self.log.slice(lo, self.log.last_index() + 1)),
        )

    def accept(self, ballot: int, prev: int, entries: tuple[Entry, ...] | list[Entry]) -> Outcome:
        """Phase 2b for slots prev+1 .. prev+len(entries), contiguous."""
        if ballot != self.promised and not self.promise(ballot):
            return Outcome.STALE_BALLOT
        if prev > self.accepted_through:
            return Outcome.GAP
        if entries:
            if entries[0].index > self.commit:
                self.log.write(entries)
            else:
                fresh = [e for e in entries if e.index > self.commit]
                if fresh:
                    self.log.write(fresh)
            end = prev + len(entries)
            if end > self.accepted_through:
                self.accepted_through = end
        return Outcome.OK

    def reaccept(self, ballot: int, prev: int, hi: int) -> Outcome:
        """Phase 2b for slots prev+1 .. hi with the values we already hold (REACCEPT).

        Only under the very promise the leader checked our values against: a higher
        ballot means we never promised it, so we refuse with a gap and get values."""
        if ballot < self.promised:
            return Outcome.STALE_BALLOT
        if ballot > self.promised:
            self.promise(ballot)
            return Outcome.GAP
        if prev > self.accepted_through or hi > self.log.last_index():
            return Outcome.GAP
        lo = max(prev + 1, self.commit + 1)
        if lo <= hi:
            self.log.write([value.reaccept(e, ballot) for e in self.log.slice(lo, hi + 1)])
        if hi > self.accepted_through:
            self.accepted_through = hi
        return Outcome.OK

    def learn(self, commit: int) -> bool:
        """The leader says slots <= ``commit`` are chosen; True if our commit grew."""
        c = min(commit, self.accepted_through)
        if c > self.commit:
            self.commit = c
            return True
        return False

    def install(self, snap: Snapshot) -> bool:
        """A chosen prefix through the snapshot's index; False if we already have it."""
        s = snap.metadata.index
        if s <= self.commit:
            return False
        self.log.restore(snap)
        self.commit = s
        self.accepted_through = s
        return True
