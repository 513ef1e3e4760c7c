"""The shard map: descriptors that tile the key space, looked up by key. Performs no I/O.

Invariant (``check``): the ranges are sorted by start key, never overlap and leave no
gap from b"" to the end of the key space. ``report`` keeps it: a reported descriptor
replaces every stored descriptor it overlaps (or shares an id with) only when it is newer
than each of them, so the map never goes backwards, and reports may arrive late, twice or
out of order. The halves of a split (or the result of a merge) are reported together.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

from kvstore.shard.descriptor import Descriptor, newer


class ShardMap:
    def __init__(self, shards: Iterable[Descriptor] = ()) -> None:
        self._by_id: dict[int, Descriptor] = {}
        self._sorted: list[Descriptor] = []
        self._starts: list[bytes] = []
        for d in shards:
            self._by_id[d.id] = d
        self._reindex()

    def _reindex(self) -> None:
        self._sorted = sorted(self._by_id.values(), key=lambda d: d.start)
        self._starts = [d.start for d in self._sorted]

    def __iter__(self) -> Iterator[Descriptor]:
        return iter(self._sorted)

    def __len__(self) -> int:
        return len(self._sorted)

    def get(self, shard_id: int) -> Descriptor | None:
        return self._by_id.get(shard_id)

    def lookup(self, key: bytes) -> Descriptor | None:
        """The shard whose range holds ``key`` (None only in a map with a gap there)."""
        i = bisect.bisect_right(self._starts, key) - 1
        if i < 0:
            return None
        d = self._sorted[i]
        return d if d.contains(key) else None

    def overlapping(self, start: bytes, end: bytes) -> list[Descriptor]:
        """Shards that intersect [start, end) (end b"" = to the end), in key order."""
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        out: list[Descriptor] = []
        for d in self._sorted[i:]:
            if end and d.start >= end:
                break
            if not d.end or d.end > start:
                out.append(d)
        return out

    def report(
        self, reported: Iterable[Descriptor], *, keep_tiling: bool = True
    ) -> list[Descriptor]:
        """Merge reported descriptors (see the module rule) as one unit: if the result
        would leave a gap or overlap where there was none, nothing changes (unless
        ``keep_tiling`` is False: a client's cache takes what it learns and refetches
        the gaps). Returns the descriptors accepted."""
        by_id = dict(self._by_id)
        accepted: list[Descriptor] = []
        for d in reported:
            clash = [old for old in by_id.values() if old.id == d.id or old.overlaps(d)]
            if d in clash or not all(newer(d, old) for old in clash):
                continue
            for old in clash:
                del by_id[old.id]
            by_id[d.id] = d
            accepted.append(d)
        if not accepted:
            return []
        was_tiled = keep_tiling and self.tiles()
        before = self._by_id
        self._by_id = by_id
        self._reindex()
        if was_tiled and not self.tiles():
            self._by_id = before
            self._reindex()
            return []
        return accepted

    def tiles(self) -> bool:
        try:
            self.check()
        except AssertionError:
            return False
        return True

    def check(self) -> None:
        """Raise AssertionError unless the ranges tile the key space exactly."""
        expect = b""
        for i, d in enumerate(self._sorted):
            assert d.start == expect, f"gap or overlap before {d.describe()} (expected {expect!r})"
            if not d.end:
                assert i == len(self._sorted) - 1, f"{d.describe()} is unbounded but not last"
                return
            expect = d.end
        raise AssertionError(f"the map does not reach the end of the key space (ends {expect!r})")
