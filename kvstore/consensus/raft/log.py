"""The Raft log: the driver's stable storage plus entries not yet known durable.

Performs no I/O (the core only reads ``LogStorage``; the driver writes it).
Invariants:
- ``unstable.entries[i].index == unstable.offset + i``; a pending snapshot sits at
  ``unstable.offset - 1`` and hides everything the storage holds.
- Entries below ``unstable.offset`` are durable in storage; the storage's entries at
  or above it may be stale (a conflicting suffix about to be replaced) and are never read.
- ``applied <= applying <= committed <= last_index()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvstore.consensus.types import (
    CompactedError,
    ConsensusError,
    Entry,
    LogStorage,
    Snapshot,
    UnavailableError,
)


@dataclass(slots=True)
class Unstable:
    offset: int
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    offset_in_progress: int = 0
    """Entries below this index were handed out in a Ready that is not yet advanced."""
    snapshot_in_progress: bool = False

    def truncate_and_append(self, ents: list[Entry] | tuple[Entry, ...]) -> None:
        first = ents[0].index
        if first == self.offset + len(self.entries):
            self.entries.extend(ents)
        elif first <= self.offset:
            # Replaces durable entries too: Ready.entries will overwrite them in storage.
            self.offset = first
            self.entries = list(ents)
            self.offset_in_progress = first
        else:
            del self.entries[first - self.offset :]
            self.entries.extend(ents)
            self.offset_in_progress = min(self.offset_in_progress, first)

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``index`` are durable, if the entry there is still the one written."""
        i = index - self.offset
        if i < 0 or i >= len(self.entries) or self.entries[i].term != term:
            return
        del self.entries[: i + 1]
        self.offset = index + 1
        self.offset_in_progress = max(self.offset_in_progress, self.offset)


class RaftLog:
    def __init__(self, storage: LogStorage, max_committed_bytes: int) -> None:
        self.storage = storage
        self.max_committed_bytes = max_committed_bytes
        first, last = storage.first_index(), storage.last_index()
        self.unstable = Unstable(offset=last + 1, offset_in_progress=last + 1)
        self.committed = first - 1
        self.applying = first - 1
        self.applied = first - 1

    # -- reading ---------------------------------------------------------------------
    def first_index(self) -> int:
        snap = self.unstable.snapshot
        if snap is not None:
            return snap.metadata.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        u = self.unstable
        if u.entries:
            return u.entries[-1].index
        if u.snapshot is not None:
            return u.snapshot.metadata.index
        return min(self.storage.last_index(), u.offset - 1)

    def stable_last(self) -> int:
        """Last index known durable in storage."""
        return min(self.storage.last_index(), self.unstable.offset - 1)

    def term(self, index: int) -> int:
        """Raises CompactedError / UnavailableError outside the log."""
        u = self.unstable
        if index >= u.offset:
            i = index - u.offset
            if i < len(u.entries):
                return u.entries[i].term
            raise UnavailableError(f"index {index} past last {self.last_index()}")
        if u.snapshot is not None:
            if index == u.snapshot.metadata.index:
                return u.snapshot.metadata.term
            raise CompactedError(f"index {index} is below the pending snapshot")
        return self.storage.term(index)

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries in [lo, hi): at least one if any, then up to ``max_size`` bytes."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise CompactedError(f"index {lo} compacted")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"index {hi - 1} past last {self.last_index()}")
        u = self.unstable
        out: list[Entry] = []
        if lo < u.offset:
            out = self.storage.entries(lo, min(hi, u.offset), max_size)
            if len(out) < min(hi, u.offset) - lo:
                return out  # the size cap was reached inside storage
        if hi > u.offset:
            start = max(lo, u.offset) - u.offset
            tail = u.entries[start : hi - u.offset]
            if max_size is None:
                out.extend(tail)
            else:
                size = sum(e.size() for e in out)
                for e in tail:
                    size += e.size()
                    if out and size > max_size:
                        break
                    out.append(e)
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft section 5.4.1: a candidate's log at least as up to date as ours."""
        ours = self.last_term()
        return last_term > ours or (last_term == ours and last_index >= self.last_index())

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest index <= ``index`` whose term is <= ``term``, with that term.

        Fast backtracking: everything above it surely differs from a log whose
        entry at ``index`` has ``term``."""
        index = min(index, self.last_index())
        while index > 0:
            try:
                t = self.term(index)
            except CompactedError:
                return index, 0
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    # -- writing ---------------------------------------------------------------------
    def append(self, ents: list[Entry] | tuple[Entry, ...]) -> int:
        if ents:
            if ents[0].index - 1 < self.committed:
                raise ConsensusError(
                    f"append at {ents[0].index} would overwrite committed {self.committed}"
                )
            self.unstable.truncate_and_append(ents)
        return self.last_index()

    def maybe_append(
        self, index: int, log_term: int, commit: int, ents: tuple[Entry, ...]
    ) -> int | None:
        """Follower side of AppendEntries. Returns the last index the leader's append
        proves we match, or None when our log does not contain (index, log_term)."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        for e in ents:
            if not self.match_term(e.index, e.term):
                if e.index <= self.committed:
                    raise ConsensusError(f"conflict at committed index {e.index}")
                self.append(ents[e.index - index - 1 :])
                break
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            self.committed = min(index, self.last_index())

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit ``index`` only if its entry is of ``term`` (Raft section 5.4.2)."""
        if index > self.committed and self.match_term(index, term):
            self.committed = index
            return True
        return False

    def restore(self, snap: Snapshot) -> None:
        idx = snap.metadata.index
        self.committed = idx
        self.unstable = Unstable(offset=idx + 1, snapshot=snap, offset_in_progress=idx + 1)

    # -- Ready bookkeeping -----------------------------------------------------------
    def unstable_to_persist(self) -> list[Entry]:
        u = self.unstable
        return u.entries[u.offset_in_progress - u.offset :]

    def snapshot_to_persist(self) -> Snapshot | None:
        u = self.unstable
        return None if u.snapshot_in_progress else u.snapshot

    def committed_to_apply(self, limit: int) -> list[Entry]:
        """Committed entries not yet handed out, up to index ``limit``."""
        if self.unstable.snapshot is not None:
            return []
        hi = min(self.committed, limit) + 1
        lo = self.applying + 1
        if lo >= hi:
            return []
        return self.entries(lo, hi, self.max_committed_bytes)

    def has_committed_to_apply(self, limit: int) -> bool:
        return self.unstable.snapshot is None and self.applying < min(self.committed, limit)

    def accept_in_progress(self) -> None:
        u = self.unstable
        u.offset_in_progress = u.offset + len(u.entries)
        if u.snapshot is not None:
            u.snapshot_in_progress = True

    def stable_snap_to(self, index: int) -> None:
        u = self.unstable
        if u.snapshot is not None and u.snapshot.metadata.index == index:
            u.snapshot = None
            u.snapshot_in_progress = False
            self.applying = max(self.applying, index)
            self.applied = max(self.applied, index)

    def applied_to(self, index: int) -> None:
        self.applied = max(self.applied, index)
        self.applying = max(self.applying, index)
