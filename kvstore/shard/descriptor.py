"""Shard descriptors: a key range [start, end) with an id and an epoch. Performs no I/O.

Rules this module keeps:
- ``end == b""`` means "to the end of the key space"; every other range has start < end.
- ``Epoch.version`` rises on every split and merge, ``Epoch.conf_ver`` on every
  membership change; neither ever goes back, so of two descriptors of one id the one with
  the higher (version, conf_ver) is newer, and of two overlapping descriptors the one with
  the higher version is newer (see ``newer``).
- ``decode(encode(d)) == d``; anything else raises ValueError. A descriptor with no merge
  state and revision offset 0 encodes as format 1 (as written before merges existed).
- While ``merging_into`` is set (a PrepareMerge applied in the shard's log) the shard is
  frozen: it applies no write, so its data is final at ``merge_index``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

_HEAD = struct.Struct("<BQQQ")
_LEN = struct.Struct("<I")
_COUNT = struct.Struct("<H")
_U64 = struct.Struct("<Q")
_FORMAT = 1
_FORMAT_MERGE = 2
_MERGE = struct.Struct("<QQQQQ")
META_GROUP = 0
"""The group that holds the shard map; it owns no user keys."""


@dataclass(frozen=True, slots=True, order=True)
class Epoch:
    version: int = 1
    """Rises on split and merge."""
    conf_ver: int = 1
    """Rises on membership change."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Descriptor:
    id: int
    start: bytes = b""
    end: bytes = b""
    """Exclusive; b"" = the end of the key space."""
    epoch: Epoch = field(default_factory=Epoch)
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    revision_offset: int = 0
    """A write applied at log index i has revision i + revision_offset (0 until a merge
    raises it past the absorbed shard's revisions, so revisions never go back per key)."""
    merging_into: int = 0
    """While a merge is prepared: the id of the left neighbour that will absorb this
    shard (0: none). The shard then applies no write and serves no strong read."""
    merge_index: int = 0
    """The index of the PrepareMerge entry (the source's last index with data)."""
    merge_target_epoch: Epoch = field(default_factory=Epoch)
    """The target's epoch the merge was prepared against; CommitMerge applies only then."""

    def __post_init__(self) -> None:
        if self.end and self.start >= self.end:
            raise ValueError(f"shard {self.id}: empty range [{self.start!r}, {self.end!r})")

    def contains(self, key: bytes) -> bool:
        return self.start <= key and (not self.end or key < self.end)

    def covers(self, start: bytes, end: bytes) -> bool:
        """True when [start, end) (end b"" = to the end) lies inside this range."""
        if start < self.start:
            return False
        if not self.end:
            return True
        return bool(end) and end <= self.end

    def overlaps(self, other: Descriptor) -> bool:
        return overlaps(self.start, self.end, other.start, other.end)

    @property
    def replicas(self) -> tuple[int, ...]:
        return tuple(sorted({*self.voters, *self.learners}))

    def describe(self) -> str:
        end = repr(self.end) if self.end else "+inf"
        return (
            f"shard {self.id} [{self.start!r}, {end}) version={self.epoch.version} "
            f"conf_ver={self.epoch.conf_ver}"
        )


def overlaps(s1: bytes, e1: bytes, s2: bytes, e2: bytes) -> bool:
    """Do [s1, e1) and [s2, e2) (b"" ends = unbounded) share a key?"""
    return (not e2 or s1 < e2) and (not e1 or s2 < e1)


def newer(a: Descriptor, b: Descriptor) -> bool:
    """Is ``a`` strictly newer than ``b`` (same id, or overlapping ranges)?"""
    if a.id == b.id:
        return (a.epoch.version, a.epoch.conf_ver) > (b.epoch.version, b.epoch.conf_ver)
    return a.epoch.version > b.epoch.version


def _has_merge_fields(d: Descriptor) -> bool:
    return bool(d.revision_offset or d.merging_into or d.merge_index) or (
        d.merge_target_epoch != Epoch()
    )


def encode(d: Descriptor) -> bytes:
    fmt = _FORMAT_MERGE if _has_merge_fields(d) else _FORMAT
    parts = [
        _HEAD.pack(fmt, d.id, d.epoch.version, d.epoch.conf_ver),
        _LEN.pack(len(d.start)),
        d.start,
        _LEN.pack(len(d.end)),
        d.end,
    ]
    for ids in (d.voters, d.learners):
        parts.append(_COUNT.pack(len(ids)))
        parts.extend(_U64.pack(i) for i in ids)
    if fmt == _FORMAT_MERGE:
        t = d.merge_target_epoch
        parts.append(
            _MERGE.pack(d.revision_offset, d.merging_into, d.merge_index, t.version, t.conf_ver)
        )
    return b"".join(parts)


def decode(data: bytes) -> Descriptor:
    d, pos = decode_from(data, 0)
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} trailing bytes after a shard descriptor")
    return d


def decode_from(data: bytes, pos: int) -> tuple[Descriptor, int]:
    """Decode one descriptor at ``pos``; returns it and the position after it."""
    try:
        fmt, ident, version, conf_ver = _HEAD.unpack_from(data, pos)
        if fmt not in (_FORMAT, _FORMAT_MERGE):
            raise ValueError(f"unknown shard descriptor format {fmt}")
        pos += _HEAD.size
        start, pos = _take(data, pos)
        end, pos = _take(data, pos)
        lists: list[tuple[int, ...]] = []
        for _ in range(2):
            (n,) = _COUNT.unpack_from(data, pos)
            pos += _COUNT.size
            lists.append(tuple(_U64.unpack_from(data, pos + 8 * i)[0] for i in range(n)))
            pos += 8 * n
        merge = (0, 0, 0, 1, 1)
        if fmt == _FORMAT_MERGE:
            merge = _MERGE.unpack_from(data, pos)
            pos += _MERGE.size
    except struct.error as e:
        raise ValueError(f"malformed shard descriptor: {e}") from e
    d = Descriptor(
        id=ident,
        start=start,
        end=end,
        epoch=Epoch(version, conf_ver),
        voters=lists[0],
        learners=lists[1],
        revision_offset=merge[0],
        merging_into=merge[1],
        merge_index=merge[2],
        merge_target_epoch=Epoch(merge[3], merge[4]),
    )
    return d, pos


def _take(data: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = _LEN.unpack_from(data, pos)
    pos += _LEN.size
    if pos + n > len(data):
        raise ValueError("shard descriptor field runs past the end")
    return bytes(data[pos : pos + n]), pos + n
