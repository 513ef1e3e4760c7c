"""Phase 1 recovery: merge a quorum's promises into the new leader's log (pure).

Rule ("Paxos Made Simple", section 2.2, for every open slot at once): for each
slot from ``start`` on,
- if some promiser knows the slot is chosen (slot <= its commit), take its value;
- else take the value accepted in the highest ballot by any promiser, proposed
  again in the new ballot;
- else (a gap below the highest reported slot) propose a NOOP.
A slot some promiser knows chosen but reported no value for (compacted into its
snapshot) makes the recovery ``incomplete``: the leader must first install that
promiser's snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kvstore.consensus.paxos import value
from kvstore.consensus.types import Entry


@dataclass(frozen=True, slots=True, kw_only=True)
class Promise:
    commit: int
    """The promiser's chosen prefix: slots <= commit hold chosen values."""
    entries: tuple[Entry, ...]
    """Its accepted values from the prepared slot (or its first slot) on, contiguous."""

    def at(self, index: int) -> Entry | None:
        if not self.entries:
            return None
        i = index - self.entries[0].index
        if 0 <= i < len(self.entries):
            return self.entries[i]
        return None

    def last(self) -> int:
        return self.entries[-1].index if self.entries else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovery:
    commit: int
    """Slots <= commit are chosen (known from a promiser's commit)."""
    entries: tuple[Entry, ...]
    """The leader's log from ``start``: chosen values, then re-proposals and NOOPs."""
    incomplete: bool = False


def recover(start: int, ballot: int, promises: Iterable[Promise]) -> Recovery:
    ps = list(promises)
    top_commit = max((p.commit for p in ps), default=0)
    last = max((p.last() for p in ps), default=0)
    out: list[Entry] = []
    by_commit = sorted(ps, key=lambda p: p.commit, reverse=True)
    for s in range(start, top_commit + 1):
        got = None
        for p in by_commit:
            if p.commit < s:
                break
            got = p.at(s)
            if got is not None:
                break
        if got is None:
            return Recovery(commit=s - 1, entries=tuple(out), incomplete=True)
        out.append(got)
    for s in range(max(start, top_commit + 1), last + 1):
        best: Entry | None = None
        for p in ps:
            e = p.at(s)
            if e is not None and (best is None or e.term > best.term):
                best = e
        out.append(value.noop(ballot, s) if best is None else value.reaccept(best, ballot))
    return Recovery(commit=max(start - 1, top_commit), entries=tuple(out))
