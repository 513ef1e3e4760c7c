"""SlotLog: an acceptor's accepted values, stable storage plus an unstable tail.

Performs no I/O: the stable part is read through ``LogStorage``; writes collect in
the unstable tail until the caller persists them (``Ready.entries``) and calls
``stable_to``.

Invariants:
- slots are contiguous from ``first_index()`` to ``last_index()``;
- an accepted value is never dropped except by a higher-ballot value for the same
  slot or by a snapshot covering the slot (a chosen prefix). ``Ready.entries``
  replaces the stored suffix from its first index, so ``write`` re-emits every
  slot after the written range, and ``restore`` keeps the slots after the
  snapshot (the caller installs ``Ready.snapshot`` before appending entries);
- ``unstable`` starts at ``offset``; everything below ``offset`` is durable.
"""

from __future__ import annotations

from kvstore.consensus.types import CompactedError, Entry, LogStorage, Snapshot, UnavailableError


class SlotLog:
    def __init__(self, storage: LogStorage) -> None:
        self.storage = storage
        self.unstable: list[Entry] = []
        self.offset = storage.last_index() + 1
        """Slot of ``unstable[0]``; slots below are durable in ``storage``."""
        self.pending_snapshot: Snapshot | None = None
        """A snapshot to install, not yet acknowledged by ``snapshot_stable``."""

    # -- reads -------------------------------------------------------------
    def snapshot_index(self) -> int:
        if self.pending_snapshot is not None:
            return self.pending_snapshot.metadata.index
        return self.storage.first_index() - 1

    def first_index(self) -> int:
        return self.snapshot_index() + 1

    def last_index(self) -> int:
        if self.unstable:
            return self.offset + len(self.unstable) - 1
        if self.pending_snapshot is not None:
            return self.pending_snapshot.metadata.index
        return self.storage.last_index()

    def stable_last(self) -> int:
        """The highest slot whose current value is durable (all below it are too)."""
        if self.pending_snapshot is not None:
            return self.pending_snapshot.metadata.index if not self.unstable else self.offset - 1
        return min(self.offset - 1, self.storage.last_index())

    def get(self, index: int) -> Entry:
        """Raises CompactedError below ``first_index()``, UnavailableError past the end."""
        if index < self.first_index():
            raise CompactedError(f"slot {index} compacted (first is {self.first_index()})")
        if index > self.last_index():
            raise UnavailableError(f"slot {index} past last {self.last_index()}")
        if index >= self.offset:
            return self.unstable[index - self.offset]
        return self.storage.entries(index, index + 1)[0]

    def slice(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Slots in [lo, hi): at least one if any, then up to ``max_size`` bytes."""
        if lo < self.first_index():
            raise CompactedError(f"slot {lo} compacted (first is {self.first_index()})")
        hi = min(hi, self.last_index() + 1)
        if lo >= hi:
            return []
        out: list[Entry] = []
        if lo < self.offset:
            out = self.storage.entries(lo, min(hi, self.offset), max_size)
            if len(out) < min(hi, self.offset) - lo:
                return out
        if hi > self.offset:
            start = max(lo, self.offset)
            out.extend(self.unstable[start - self.offset : hi - self.offset])
        if max_size is None or len(out) <= 1:
            return out
        size = out[0].size()
        n = 1
        while n < len(out) and size + out[n].size() <= max_size:
            size += out[n].size()
            n += 1
        return out[:n]

    # -- writes ------------------------------------------------------------
    def write(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        """Set the slots of ``entries`` (contiguous, first <= last_index()+1), keeping
        every slot after them. Slots already covered by the snapshot are skipped."""
        if not entries:
            return
        first_ok = self.first_index()
        if entries[0].index < first_ok:
            entries = [e for e in entries if e.index >= first_ok]
            if not entries:
                return
        lo, hi = entries[0].index, entries[-1].index
        last = self.last_index()
        if lo > last + 1:
            raise UnavailableError(f"gap: writing slot {lo} after last {last}")
        tail = self.slice(hi + 1, last + 1) if hi < last else []
        if lo == last + 1 and lo >= self.offset:
            self.unstable.extend(entries)  # the common case: appending
            return
        if lo >= self.offset:
            del self.unstable[lo - self.offset :]
        else:
            self.unstable = []
            self.offset = lo
        self.unstable.extend(entries)
        self.unstable.extend(tail)

    def restore(self, snap: Snapshot) -> None:
        """Make ``snap`` the log's base, keeping the accepted slots after it."""
        s = snap.metadata.index
        last = self.last_index()
        tail = self.slice(s + 1, last + 1) if last > s and s + 1 >= self.first_index() else []
        self.pending_snapshot = snap
        self.unstable = tail
        self.offset = s + 1

    # -- persistence acknowledgements -----------------------------------------
    def stable_to(self, persisted: tuple[Entry, ...]) -> None:
        """``persisted`` (a Ready's entries) is durable. Drop the unstable slots it
        covers, unless they were rewritten since that Ready was taken."""
        if not persisted or not self.unstable:
            return
        lo, hi = persisted[0].index, persisted[-1].index
        if self.offset < lo or hi < self.offset:
            return
        for e in self.unstable[: hi - self.offset + 1]:
            p = persisted[e.index - lo]
            if p is not e and p != e:
                return
        del self.unstable[: hi - self.offset + 1]
        self.offset = hi + 1

    def snapshot_stable(self, snap: Snapshot) -> None:
        if self.pending_snapshot is snap:
            self.pending_snapshot = None
