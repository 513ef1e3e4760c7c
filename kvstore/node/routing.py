"""Node-side routing: which hosted group serves a key or range, or a stale-route error.

Rule: a sharded node serves an op only from a hosted replica whose descriptor holds the
op's key (a scan: its whole range) and, when the client routed the op (shard != 0), whose
id and version are the ones it routed with. Otherwise it raises StaleRouteOp carrying the
node's descriptors that overlap the op, so the client can fix its cache without another
round trip. Where two hosted replicas overlap (a lagging one that slept through a split),
the newer descriptor wins. An unsharded node serves everything from group 1.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable

from kvstore.node.errors import StaleRouteOp
from kvstore.shard.descriptor import Descriptor, overlaps
from kvstore.storage import NodeStorage

UNSHARDED_GROUP = 1


class LocalRouter:
    def __init__(
        self, storage: NodeStorage, sharded: bool, hosted: Callable[[], Iterable[int]]
    ) -> None:
        self.storage = storage
        self.sharded = sharded
        self._hosted = hosted
        self._by_id: dict[int, Descriptor] = {}
        self._sorted: list[Descriptor] = []
        self._starts: list[bytes] = []
        self.refresh()

    def refresh(self) -> None:
        """Rebuild from the hosted groups' committed descriptors (after a split, a
        snapshot install or a membership change)."""
        by_id: dict[int, Descriptor] = {}
        for g in self._hosted():
            d = self.storage.group(g).view.shard
            if d is not None:
                by_id[g] = d
        # Newest first among equal starts, so a lagging overlapped replica loses.
        ordered = sorted(by_id.values(), key=lambda d: (d.start, -d.epoch.version))
        self._by_id, self._sorted = by_id, ordered
        self._starts = [d.start for d in ordered]
        self._overlap = any(a.overlaps(b) for a, b in itertools.pairwise(ordered))

    def descriptors(self) -> list[Descriptor]:
        return list(self._sorted)

    def get(self, group: int) -> Descriptor | None:
        return self._by_id.get(group)

    def overlapping(self, start: bytes, end: bytes) -> tuple[Descriptor, ...]:
        return tuple(d for d in self._sorted if overlaps(d.start, d.end, start, end))

    def _owner(self, key: bytes) -> Descriptor | None:
        i = bisect.bisect_right(self._starts, key)
        if not self._overlap:
            d = self._sorted[i - 1] if i else None
            return d if d is not None and d.contains(key) else None
        best: Descriptor | None = None
        for d in self._sorted[:i]:
            if d.contains(key) and (best is None or d.epoch.version > best.epoch.version):
                best = d
        return best

    def for_range(self, start: bytes, end: bytes, shard: int, version: int) -> int:
        """The group to serve keys [start, end) (end b"": to the end; a point op passes
        end = start + b"\\0")."""
        if not self.sharded:
            return UNSHARDED_GROUP
        d = self._by_id.get(shard) if shard else self._owner(start)
        if d is None or not d.covers(start, end) or (version and version != d.epoch.version):
            fresh = self.overlapping(start, end or start + b"\0")
            if d is None:
                why = f"shard {shard} has no replica here" if shard else "no shard here owns"
            elif version and version != d.epoch.version:
                why = f"shard {d.id} is at version {d.epoch.version}, not {version}"
            else:
                why = f"{d.describe()} does not hold"
            raise StaleRouteOp(f"stale route: {why} {start!r}..{end!r}", fresh)
        return d.id

    def for_key(self, key: bytes, shard: int, version: int) -> int:
        return self.for_range(key, key + b"\0", shard, version)
