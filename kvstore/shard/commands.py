"""Shard admin commands: log entries that change ranges or the shard map. No I/O.

Rule: an admin entry's data starts with ADMIN_MAGIC (a client batch starts with its
version byte 1, so the two never mix); ``decode(encode(c)) == c`` and anything malformed
raises ValueError. Applying one (``apply_meta`` here, the split in the storage writer)
depends only on the group's state and the command, so every replica changes at the same
index in the same way.

    Split(new_id, at, epoch)   data group: keep [start, at), create new_id for [at, end)
    AllocIds(n)                meta group: reserve n shard ids; result: the first
    Report(descriptors)        meta group: merge into the shard map (ShardMap.report)
    PrepareMerge(target, source_epoch, target_epoch)
                               source (right) group: freeze for a merge into ``target``
    CommitMerge(source)        target (left) group: absorb the prepared source replica
    RollbackMerge(epoch)       source group: unfreeze, version + 1
    FenceMerge(source)         target group: version + 1, so no CommitMerge prepared
                               against the old epoch can apply after it
    Compact(revision)          any group: drop its history up to min(revision, this
                               entry's revision) (kvstore.storage.history)
(kvstore.shard.merging holds the merge rules.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvstore.shard import descriptor as desc
from kvstore.shard.descriptor import Descriptor, Epoch
from kvstore.shard.shardmap import ShardMap

ADMIN_MAGIC = 0xA5
_HEAD = struct.Struct("<BB")
_SPLIT = struct.Struct("<QQQI")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_KIND_SPLIT = 1
_KIND_ALLOC = 2
_KIND_REPORT = 3
_KIND_PREPARE_MERGE = 4
_KIND_COMMIT_MERGE = 5
_KIND_ROLLBACK_MERGE = 6
_KIND_FENCE_MERGE = 7
_KIND_COMPACT = 20
_PREPARE = struct.Struct("<QQQQQ")
_EPOCH = struct.Struct("<QQ")


@dataclass(frozen=True, slots=True)
class Split:
    new_id: int
    at: bytes
    epoch: Epoch
    """The epoch the split was decided with; a replica with another applies nothing."""


@dataclass(frozen=True, slots=True)
class AllocIds:
    n: int = 1


@dataclass(frozen=True, slots=True)
class Report:
    shards: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class PrepareMerge:
    """In the source's log: freeze it for a merge into ``target`` (result: the entry's
    index, the source's last index with data; 0 when refused)."""

    target: int
    source_epoch: Epoch
    """The source's epoch the merge was decided with; another one applies nothing."""
    target_epoch: Epoch
    """The target's epoch; the CommitMerge applies only while the target has it."""


@dataclass(frozen=True, slots=True)
class CommitMerge:
    """In the target's log: absorb ``source`` (its descriptor as the PrepareMerge left
    it). Result: the merged version, 0 when refused."""

    source: Descriptor


@dataclass(frozen=True, slots=True)
class RollbackMerge:
    """In the source's log: give up a prepared merge (result: the new version, 0 when
    refused)."""

    source_epoch: Epoch


@dataclass(frozen=True, slots=True)
class FenceMerge:
    """In the target's log, before a RollbackMerge of ``source``: raise the target's
    version, so no CommitMerge ordered after this entry can apply (result: the new
    version, 0 when refused)."""

    source: int


@dataclass(frozen=True, slots=True)
class Compact:
    """In any group's log: its history keeps only revisions above ``revision`` (result:
    the compacted revision, never above the entry's own)."""

    revision: int


MERGE_COMMANDS = (PrepareMerge, CommitMerge, RollbackMerge, FenceMerge)
AdminCommand = (
    Split | AllocIds | Report | PrepareMerge | CommitMerge | RollbackMerge | FenceMerge | Compact
)


def is_admin(data: bytes) -> bool:
    return bool(data) and data[0] == ADMIN_MAGIC


def encode(cmd: AdminCommand) -> bytes:
    if isinstance(cmd, Split):
        return (
            _HEAD.pack(ADMIN_MAGIC, _KIND_SPLIT)
            + _SPLIT.pack(cmd.new_id, cmd.epoch.version, cmd.epoch.conf_ver, len(cmd.at))
            + cmd.at
        )
    if isinstance(cmd, AllocIds):
        return _HEAD.pack(ADMIN_MAGIC, _KIND_ALLOC) + _U64.pack(cmd.n)
    if isinstance(cmd, PrepareMerge):
        s, t = cmd.source_epoch, cmd.target_epoch
        return _HEAD.pack(ADMIN_MAGIC, _KIND_PREPARE_MERGE) + _PREPARE.pack(
            cmd.target, s.version, s.conf_ver, t.version, t.conf_ver
        )
    if isinstance(cmd, CommitMerge):
        return _HEAD.pack(ADMIN_MAGIC, _KIND_COMMIT_MERGE) + desc.encode(cmd.source)
    if isinstance(cmd, RollbackMerge):
        e = cmd.source_epoch
        return _HEAD.pack(ADMIN_MAGIC, _KIND_ROLLBACK_MERGE) + _EPOCH.pack(e.version, e.conf_ver)
    if isinstance(cmd, FenceMerge):
        return _HEAD.pack(ADMIN_MAGIC, _KIND_FENCE_MERGE) + _U64.pack(cmd.source)
    if isinstance(cmd, Compact):
        return _HEAD.pack(ADMIN_MAGIC, _KIND_COMPACT) + _U64.pack(cmd.revision)
    parts = [_HEAD.pack(ADMIN_MAGIC, _KIND_REPORT), _U32.pack(len(cmd.shards))]
    parts += [desc.encode(d) for d in cmd.shards]
    return b"".join(parts)


def decode(data: bytes) -> AdminCommand:
    try:
        magic, kind = _HEAD.unpack_from(data, 0)
        if magic != ADMIN_MAGIC:
            raise ValueError("not an admin command")
        pos = _HEAD.size
        if kind == _KIND_SPLIT:
            new_id, version, conf_ver, n = _SPLIT.unpack_from(data, pos)
            pos += _SPLIT.size
            at = bytes(data[pos : pos + n])
            if len(at) != n or pos + n != len(data):
                raise ValueError("split key length does not match")
            return Split(new_id, at, Epoch(version, conf_ver))
        if kind == _KIND_ALLOC:
            if len(data) != pos + _U64.size:
                raise ValueError("alloc command length")
            return AllocIds(_U64.unpack_from(data, pos)[0])
        if kind == _KIND_REPORT:
            (n,) = _U32.unpack_from(data, pos)
            pos += _U32.size
            shards = []
            for _ in range(n):
                d, pos = desc.decode_from(data, pos)
                shards.append(d)
            if pos != len(data):
                raise ValueError("trailing bytes after a report")
            return Report(tuple(shards))
        if kind == _KIND_PREPARE_MERGE:
            if len(data) != pos + _PREPARE.size:
                raise ValueError("prepare-merge command length")
            t, sv, sc, tv, tc = _PREPARE.unpack_from(data, pos)
            return PrepareMerge(t, Epoch(sv, sc), Epoch(tv, tc))
        if kind == _KIND_COMMIT_MERGE:
            return CommitMerge(desc.decode(bytes(data[pos:])))
        if kind == _KIND_ROLLBACK_MERGE:
            if len(data) != pos + _EPOCH.size:
                raise ValueError("rollback-merge command length")
            v, c = _EPOCH.unpack_from(data, pos)
            return RollbackMerge(Epoch(v, c))
        if kind == _KIND_FENCE_MERGE:
            if len(data) != pos + _U64.size:
                raise ValueError("fence-merge command length")
            return FenceMerge(_U64.unpack_from(data, pos)[0])
        if kind == _KIND_COMPACT:
            if len(data) != pos + _U64.size:
                raise ValueError("compact command length")
            return Compact(_U64.unpack_from(data, pos)[0])
    except struct.error as e:
        raise ValueError(f"malformed admin command: {e}") from e
    raise ValueError(f"unknown admin command kind {kind}")


@dataclass(slots=True)
class MetaState:
    """The meta group's state machine: the shard map and the next free shard id."""

    shards: ShardMap
    next_id: int

    def encode(self) -> bytes:
        parts = [_U64.pack(self.next_id), _U32.pack(len(self.shards))]
        parts += [desc.encode(d) for d in self.shards]
        return b"".join(parts)

    @staticmethod
    def decode(data: bytes) -> MetaState:
        try:
            (next_id,) = _U64.unpack_from(data, 0)
            (n,) = _U32.unpack_from(data, 8)
        except struct.error as e:
            raise ValueError(f"malformed meta state: {e}") from e
        pos = 12
        shards = []
        for _ in range(n):
            d, pos = desc.decode_from(data, pos)
            shards.append(d)
        if pos != len(data):
            raise ValueError("trailing bytes after the meta state")
        return MetaState(ShardMap(shards), next_id)

    def apply(self, cmd: AdminCommand) -> int:
        """Apply a meta command; returns its result (AllocIds: the first id; Report: how
        many descriptors were accepted; others: 0 and nothing changes)."""
        if isinstance(cmd, AllocIds):
            first = self.next_id
            self.next_id += max(cmd.n, 0)
            return first
        if isinstance(cmd, Report):
            return len(self.shards.report(cmd.shards))
        return 0


def initial_meta(shards: ShardMap) -> MetaState:
    return MetaState(shards, max((d.id for d in shards), default=0) + 1)
