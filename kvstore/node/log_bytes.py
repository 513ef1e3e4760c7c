"""How many bytes a group's log holds above its compaction point, so it is compacted by
size as well as by count.

Rule kept: a replica compacts its log once the entries applied since the last compaction
hold ``snapshot_bytes`` or more, keeping the newest quarter of that as a tail (TiKV's
raft-log-gc-size-limit). Compacting by count alone (``snapshot_entries``) let a log of
batch entries (hundreds of commands each) grow to hundreds of MiB, and a follower that far
behind replayed every command through the state machine (1 M writes: 60 s); past the
compaction point the leader ships a snapshot image instead, which installs in one bulk
pass. Compaction only drops entries every replica of the group may have applied from
them (a replica compacts up to what it applied itself); a follower behind it gets a
snapshot, as after any compaction. A leader compacts by size no further than every other
member's match until the log holds HOLD_FACTOR times the limit (TiKV's rule too), so a
follower that just installed a snapshot finds the entries after it (replica.py).

Sizes are those of the entries this replica stored, seeded at start from the log it
holds (``GroupLog.entry_sizes``); a suffix replaced by a leader's entries is counted
again from the new entries.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

HOLD_FACTOR = 4
"""A leader holds compaction by size for a lagging member until the log holds this many
times the limit; past that, the member gets a snapshot (it may be down for good)."""


class LogBytes:
    """Running byte totals of the stored entries above the compaction point."""

    __slots__ = ("_index", "_total")

    def __init__(self, sizes: Iterable[tuple[int, int]] = ()) -> None:
        self._index: list[int] = []
        """Entry indexes, ascending and contiguous."""
        self._total: list[int] = []
        """Bytes of the entries up to and including ``_index[i]`` (from an arbitrary base)."""
        for index, size in sizes:
            self.stored(index, size)

    def stored(self, index: int, size: int) -> None:
        """Entry ``index`` of ``size`` bytes is in the log now (replacing any at or above)."""
        if self._index and index <= self._index[-1]:
            cut = bisect.bisect_left(self._index, index)
            del self._index[cut:], self._total[cut:]
        if self._index and index != self._index[-1] + 1:
            # A gap (a snapshot installed past our log): what is below it is gone.
            self._index.clear()
            self._total.clear()
        self._index.append(index)
        self._total.append((self._total[-1] if self._total else 0) + size)

    def _upto(self, index: int) -> int:
        """Bytes of the known entries <= ``index``."""
        i = bisect.bisect_right(self._index, index)
        return self._total[i - 1] if i else 0

    def between(self, lo: int, hi: int) -> int:
        """Bytes of the entries in (lo, hi]."""
        return max(0, self._upto(hi) - self._upto(lo))

    def compact_point(self, applied: int, limit: int) -> int:
        """Where to compact to (0: not yet): once the applied entries above the last
        compaction hold ``limit`` bytes, the index that keeps about ``limit // 4`` bytes
        of them as a tail for followers that lag a little."""
        if limit <= 0 or not self._index or self.between(self._index[0] - 1, applied) < limit:
            return 0
        keep_from = self._upto(applied) - limit // 4
        i = bisect.bisect_right(self._total, keep_from)
        return min(applied, self._index[i - 1]) if i else 0

    def compacted(self, index: int) -> None:
        """Entries <= ``index`` left the log."""
        cut = bisect.bisect_right(self._index, index)
        del self._index[:cut], self._total[:cut]
