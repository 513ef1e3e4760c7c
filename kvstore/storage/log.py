"""GroupLog: one group's stable Raft/Paxos log in LMDB (consensus.types.LogStorage).

Invariant: a GroupLog answers from an immutable LogView (bounds, hard and conf state,
applied index and a cached tail of the log) that is replaced only after the write
transaction that changed it has committed; older entries are read from LMDB and
checksum-verified. A read racing a commit sees the state before or after it, and a log
read that finds entries gone since its view raises CompactedError or UnavailableError.

The log base (snapshot sub-db) is the index and term just before the first stored entry:
``term(first_index() - 1)`` is always answerable, as in MemoryStorage.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvstore.consensus.types import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
    limit_size,
)
from kvstore.shard import descriptor as desc
from kvstore.shard.descriptor import Descriptor
from kvstore.storage import codec, keys, tombstone
from kvstore.storage.errors import CorruptionError, StorageError
from kvstore.storage.snapshot import ImageWriter, Sink
from kvstore.storage.tables import Dbs, GroupTables, owned_range

if TYPE_CHECKING:
    from typing import Any

    from kvstore.consensus.types import LogStorage
    from kvstore.storage.env import NodeStorage

TAIL_ENTRIES = 512
"""Default entries of each group's log tail kept in memory (hot for term() and
replication); NodeStorage(cache_entries=...) changes it."""

TAIL_BYTES = 64 << 20
"""The tail also stops at this many bytes of entries (the newest kept): 512 entries of
1-4 MiB writes held 0.5-2 GiB in memory; older entries are read from LMDB."""


def cap_tail(entries: Sequence[Entry], max_entries: int) -> tuple[Entry, ...]:
    """The newest of ``entries`` that fit ``max_entries`` and TAIL_BYTES."""
    if max_entries <= 0:
        return ()
    newest = entries[-max_entries:]
    # One pass in C-speed steps for the usual case (the whole tail fits): this runs at
    # every commit, for up to TAIL_ENTRIES entries.
    if sum([len(e.data) for e in newest]) + 24 * len(newest) <= TAIL_BYTES:
        return tuple(newest)
    size = 0
    for i in range(len(newest) - 1, -1, -1):
        size += newest[i].size()
        if size > TAIL_BYTES:
            return tuple(newest[i + 1 :])
    return tuple(newest)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogView:
    """What is committed for one group. ``tail`` ends at ``last_index`` (may be empty)."""

    base: SnapshotMetadata = field(default_factory=SnapshotMetadata)
    last_index: int = 0
    last_term: int = 0
    applied: int = 0
    hard_state: HardState = field(default_factory=HardState)
    conf_state: ConfState = field(default_factory=ConfState)
    tail: tuple[Entry, ...] = ()
    shard: Descriptor | None = None
    """The group's shard descriptor as of ``applied`` (None: unsharded, or the meta group)."""

    @property
    def tail_start(self) -> int:
        return self.last_index - len(self.tail) + 1


def read_entry(txn: Any, dbs: Dbs, group: int, index: int) -> Entry | None:
    record = txn.get(keys.log_key(group, index), db=dbs.log)
    return None if record is None else codec.decode_entry(group, index, record)


def read_entries(
    txn: Any, dbs: Dbs, group: int, lo: int, hi: int, max_size: int | None
) -> list[Entry]:
    """Stored entries from ``lo`` while contiguous, below ``hi``, within ``max_size``
    (at least one)."""
    out: list[Entry] = []
    cur = txn.cursor(db=dbs.log)
    if not cur.set_range(keys.log_key(group, lo)):
        return out
    size = 0
    end = keys.log_key(group, hi)
    for k, record in cur:
        if k >= end:
            break
        index = keys.log_index(k)
        if index != lo + len(out):
            break
        e = codec.decode_entry(group, index, record)
        size += e.size()
        if out and max_size is not None and size > max_size:
            break
        out.append(e)
    return out


def read_members(txn: Any, dbs: Dbs, group: int) -> dict[int, str]:
    """The group's member address book (addresses given by conf changes)."""
    record = txn.get(keys.meta_key(group, keys.TAG_MEMBERS), db=dbs.meta)
    if record is None:
        return {}
    try:
        return codec.decode_members(codec.unseal(group, record, "member addresses"))
    except ValueError as e:
        raise CorruptionError(f"undecodable member addresses: {e}", group=group) from e


def load_view(txn: Any, dbs: Dbs, group: int, cache_entries: int = TAIL_ENTRIES) -> LogView:
    """Read a group's committed state (and its last ``cache_entries`` entries) in ``txn``."""

    def sealed(db: Any, key: bytes, what: str) -> bytes | None:
        record = txn.get(key, db=db)
        return None if record is None else codec.unseal(group, record, what)

    try:
        hs = sealed(dbs.meta, keys.meta_key(group, keys.TAG_HARD_STATE), "hard state")
        cs = sealed(dbs.meta, keys.meta_key(group, keys.TAG_CONF_STATE), "conf state")
        applied = sealed(dbs.meta, keys.meta_key(group, keys.TAG_APPLIED), "applied index")
        base_rec = sealed(dbs.snapshot, keys.group_prefix(group), "log base")
        base = SnapshotMetadata() if base_rec is None else codec.decode_base(base_rec)
        hard_state = HardState() if hs is None else codec.decode_hard_state(hs)
        # Never below what an earlier replica of the group here promised (tombstone.py).
        hard_state = tombstone.floor(hard_state, tombstone.read(txn, dbs, group))
        conf_state = base.conf_state if cs is None else codec.decode_conf_state(cs)
        applied_index = base.index if applied is None else codec.decode_u64(applied)
        shard_rec = sealed(dbs.meta, keys.meta_key(group, keys.TAG_SHARD), "shard descriptor")
        shard = None if shard_rec is None else desc.decode(shard_rec)
    except (ValueError, IndexError) as e:  # struct.error is a ValueError
        raise CorruptionError(f"undecodable metadata: {e}", group=group) from e
    last = base.index
    cur = txn.cursor(db=dbs.log)
    found = cur.set_range(keys.log_key(group + 1, 0))
    if (cur.prev() if found else cur.last()) and cur.key().startswith(keys.group_prefix(group)):
        last = keys.log_index(cur.key())
    lo = max(base.index + 1, last - cache_entries + 1)
    tail = read_entries(txn, dbs, group, lo, last + 1, None)
    if len(tail) != last - lo + 1:
        raise CorruptionError(f"log has a hole below {last}", group=group, index=lo + len(tail))
    return LogView(
        base=base,
        last_index=last,
        last_term=tail[-1].term if tail else base.term,
        applied=applied_index,
        hard_state=hard_state,
        conf_state=conf_state,
        tail=cap_tail(tail, cache_entries),
        shard=shard,
    )


class GroupLog:
    """The LMDB LogStorage of one group. Get it from ``NodeStorage.group(id)``; the
    driver writes through ``NodeStorage.write()``, the core only reads."""

    def __init__(self, storage: NodeStorage, group: int, view: LogView) -> None:
        self._st = storage
        self.group = group
        self.view = view
        """Replaced (never mutated) by NodeStorage after each committed write."""
        self._snap_cache: tuple[int, ConfState, Snapshot] | None = None
        self.streamed: SnapshotMetadata | None = None
        """With ``stream_snapshots``: the metadata of the image the node built last."""

    # -- LogStorage ----------------------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        """Hard state and the membership as of the applied index."""
        v = self.view
        return v.hard_state, v.conf_state

    def first_index(self) -> int:
        return self.view.base.index + 1

    def last_index(self) -> int:
        return self.view.last_index

    def term(self, index: int) -> int:
        v = self.view
        if index < v.base.index:
            raise CompactedError(f"index {index} compacted (first is {v.base.index + 1})")
        if index > v.last_index:
            raise UnavailableError(f"index {index} past last {v.last_index}")
        if index == v.base.index:
            return v.base.term
        start = v.tail_start
        if index >= start:
            return v.tail[index - start].term
        return self._read(index, index + 1, None)[0].term

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        v = self.view
        if lo <= v.base.index:
            raise CompactedError(f"index {lo} compacted (first is {v.base.index + 1})")
        if hi > v.last_index + 1:
            raise UnavailableError(f"index {hi - 1} past last {v.last_index}")
        if lo >= hi:
            return []
        start = v.tail_start
        if lo >= start:
            return limit_size(v.tail[lo - start : hi - start], max_size)
        out = self._read(lo, min(hi, start), max_size)
        if hi > start and len(out) == start - lo:
            size = sum(e.size() for e in out)
            for e in v.tail[: hi - start]:
                size += e.size()
                if max_size is not None and size > max_size:
                    break
                out.append(e)
        return out

    def snapshot(self) -> Snapshot:
        """The snapshot at the applied index: metadata (applied, term(applied), conf
        state) and the group's image. With ``NodeStorage.stream_snapshots`` the image is
        left out (``data`` b"", cost O(1)): the node builds and streams it off the event
        loop (node/snapshot_send.py, ``write_image_to``). Otherwise it is built here, in one
        read transaction, and cached until the applied index or the membership changes."""
        v = self.view
        if self._st.stream_snapshots:
            built = self.streamed
            if built is not None and v.base.index <= built.index <= v.applied:
                # The image built last is still usable (the log continues from it):
                # name it, so it is reused and a broken transfer of it resumes.
                return Snapshot(metadata=built)
            meta = SnapshotMetadata(
                index=v.applied, term=self.term(v.applied), conf_state=v.conf_state
            )
            return Snapshot(metadata=meta)
        cached = self._snap_cache
        if cached is not None and cached[0] == v.applied and cached[1] == v.conf_state:
            return cached[2]
        buf = io.BytesIO()
        meta, _, _ = self.write_image_to(buf)
        snap = Snapshot(metadata=meta, data=buf.getvalue())
        self._snap_cache = (meta.index, meta.conf_state, snap)
        return snap

    def write_image_to(self, out: Sink) -> tuple[SnapshotMetadata, int, int]:
        """Write the image at the applied index to ``out``, record by record, from ONE
        read transaction (a consistent view however long it takes; safe off the event
        loop). Returns its metadata, size in bytes and CRC32."""
        with self._st.env.begin(db=self._st.dbs.log) as txn:
            now = load_view(txn, self._st.dbs, self.group, cache_entries=0)
            if now.applied == now.base.index:
                term = now.base.term
            else:
                e = read_entry(txn, self._st.dbs, self.group, now.applied)
                if e is None:
                    raise StorageError(
                        f"group {self.group}: applied index {now.applied} is not in the log"
                    )
                term = e.term
            tables = GroupTables(txn, self._st.dbs, self.group, owned_range(self.group, now.shard))
            meta_state = txn.get(
                keys.meta_key(self.group, keys.TAG_META_STATE), db=self._st.dbs.meta
            )
            w = ImageWriter(
                out,
                now.applied,
                shard=b"" if now.shard is None else desc.encode(now.shard),
                meta_state=b""
                if meta_state is None
                else codec.unseal(self.group, meta_state, "meta group state"),
                members=codec.encode_members(read_members(txn, self._st.dbs, self.group)),
            )
            w.kv_records(tables.raw_kv())
            w.session_records(tables.raw_sessions())
            size, crc = w.finish()
        meta = SnapshotMetadata(index=now.applied, term=term, conf_state=now.conf_state)
        return meta, size, crc

    # -- extras for the driver ------------------------------------------------
    def applied_index(self) -> int:
        return self.view.applied

    def member_addresses(self) -> dict[int, str]:
        """Addresses of the members added by conf changes (they outlive restarts)."""
        with self._st.env.begin() as txn:
            return read_members(txn, self._st.dbs, self.group)

    def bootstrap(
        self,
        voters: frozenset[int] | set[int],
        shard: Descriptor | None = None,
        meta_state: bytes | None = None,
        initial_index: int = 0,
    ) -> bool:
        """Record the first membership (a ConfState at index 0) of a brand-new group, and
        its shard descriptor / meta group state when given. Returns False and changes
        nothing if the group already has any state (so a restarting node may call it
        unconditionally). ``initial_index`` > 0 starts the log there (base, applied, commit
        and term all at it, as TiKV starts regions at 5): a replica added later finds no
        entries below it and must take a snapshot, which carries the shard descriptor.
        Runs its own write transaction: never call it inside ``NodeStorage.write()``."""
        with self._st.write() as w:
            return w.bootstrap(
                self.group, ConfState(voters=frozenset(voters)), shard, meta_state, initial_index
            )

    def entry_sizes(self) -> list[tuple[int, int]]:
        """(index, stored bytes) of every entry in the log, oldest first (reads keys and
        record lengths only: the node counts its log's bytes at start, log_bytes.py)."""
        out: list[tuple[int, int]] = []
        with self._st.env.begin(db=self._st.dbs.log, buffers=True) as txn:
            cur = txn.cursor()
            end = keys.log_key(self.group + 1, 0)
            if not cur.set_range(keys.log_key(self.group, self.view.base.index + 1)):
                return out
            for k, v in cur:
                if bytes(k) >= end:
                    break
                out.append((keys.log_index(bytes(k)), len(v)))
        return out

    def forget_snapshot(self) -> None:
        """Drop the cached snapshot (its group's data was replaced wholesale)."""
        self._snap_cache = None

    def _read(self, lo: int, hi: int, max_size: int | None) -> list[Entry]:
        with self._st.env.begin() as txn:
            out = read_entries(txn, self._st.dbs, self.group, lo, hi, max_size)
        if not out:
            # Gone since our view was taken: a compaction or truncation committed.
            v = self.view
            if lo <= v.base.index:
                raise CompactedError(f"index {lo} compacted (first is {v.base.index + 1})")
            raise UnavailableError(f"index {lo} past last {v.last_index}")
        return out


def _limit(ents: tuple[Entry, ...], max_size: int | None) -> list[Entry]:
    if max_size is None or not ents:
        return list(ents)
    size = ents[0].size()
    n = 1
    while n < len(ents) and size + ents[n].size() <= max_size:
        size += ents[n].size()
        n += 1
    return list(ents[:n])


if TYPE_CHECKING:

    def _is_log_storage(log: GroupLog) -> LogStorage:
        return log  # mypy proves GroupLog satisfies the consensus contract
