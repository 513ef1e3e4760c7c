"""The history table: every group's retained events, and reads at past revisions.

Rule: this is the only module that reads or writes the ``history`` sub-database. A
group's history holds the events of every revision above its compacted revision, with
no gap: a reader that finds ``start > compacted`` gets every event from ``start`` on
(in revision order, within a revision in apply order). Events at or below the compacted
revision are never served, whether or not they are physically gone yet (compaction
deletes them a bounded number per persist, ``sweep``).

    history  group u64                       -> u64 compacted revision (absent: 0)
             group u64 | revision u64 | n u32 -> event (statemachine/history.py)

How the compacted revision moves (docs/watch.md): the retention window (``serve
--history-revisions``) after each apply, a Compact command in the group's log, a
snapshot install (the image carries no history: the replica's history starts at the
snapshot's revision), a merge (the target's history starts after the source's last
revision, so no resume can miss the source's events). A split copies the parent's
events of the new shard's range to the new shard, with the parent's compacted revision.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kvstore.shard import descriptor as desc
from kvstore.statemachine.history import Event, EventKind, decode_event, encode_event, event_key
from kvstore.statemachine.types import KeyValue
from kvstore.storage import codec, keys
from kvstore.storage.errors import CorruptionError
from kvstore.storage.tables import WHOLE, GroupTables

if TYPE_CHECKING:
    from kvstore.storage.env import NodeStorage

DEFAULT_HISTORY_REVISIONS = 10_000
"""Revisions a group's history keeps by default (``serve --history-revisions``). A
revision is one log entry, which may carry a batch of many writes."""
SWEEP_EVENTS = 256
"""Compacted events a persist deletes at least (more when it applied more)."""

_EV = struct.Struct(">QQI")
_U64 = struct.Struct("<Q")
_FLOOR_LEN = 8


def _floor_key(group: int) -> bytes:
    return keys.group_prefix(group)


def _ev_key(group: int, revision: int, n: int) -> bytes:
    return _EV.pack(group, revision, n)


class Compacted(Exception):
    """The revision asked for is at or below the group's compacted revision."""

    def __init__(self, revision: int, compacted: int) -> None:
        super().__init__(
            f"revision {revision} is compacted: the oldest available revision is {compacted + 1}"
        )
        self.revision = revision
        self.compacted = compacted


class GroupHistory:
    """``group``'s history in ``txn`` (read or write)."""

    def __init__(self, txn: Any, db: Any, group: int) -> None:
        self.txn = txn
        self.db = db
        self.group = group

    # -- the compacted revision -------------------------------------------------------
    def compacted(self) -> int:
        record = self.txn.get(_floor_key(self.group), db=self.db)
        if record is None:
            return 0
        if len(record) != _U64.size:
            raise CorruptionError(f"compacted revision of {len(record)} bytes", group=self.group)
        n: int = _U64.unpack(record)[0]
        return n

    def compact(self, revision: int) -> int:
        """Raise the compacted revision to ``revision`` (never lowers it); returns it.
        The events go later, ``sweep``."""
        cur = self.compacted()
        if revision > cur:
            self.txn.put(_floor_key(self.group), _U64.pack(revision), db=self.db)
            return revision
        return cur

    def sweep(self, budget: int) -> int:
        """Delete at most ``budget`` events at or below the compacted revision; returns
        how many went (fewer than ``budget``: none is left)."""
        floor = self.compacted()
        if not floor:
            return 0
        cur = self.txn.cursor(db=self.db)
        stop = _ev_key(self.group, floor + 1, 0)
        if not cur.set_range(_ev_key(self.group, 0, 0)):
            return 0
        n = 0
        while n < budget:
            k = cur.key()
            if not k or k >= stop:
                break
            cur.delete()
            n += 1
        return n

    # -- writes --------------------------------------------------------------------------
    def append(self, events: list[Event]) -> None:
        """Store the events of one entry (all of one revision, in apply order)."""
        put, db, g = self.txn.put, self.db, self.group
        for n, e in enumerate(events):
            put(_ev_key(g, e.revision, n), encode_event(e), db=db)

    def reset(self, compacted: int) -> None:
        """Forget every event; the history starts after ``compacted`` (a snapshot
        install, whose image carries no history)."""
        self.drop()
        self.txn.put(_floor_key(self.group), _U64.pack(compacted), db=self.db)

    def drop(self) -> None:
        """Delete everything of the group (its state is destroyed)."""
        cur = self.txn.cursor(db=self.db)
        end = keys.group_end(self.group)
        cur.set_range(_floor_key(self.group))
        while True:
            k = cur.key()
            if not k or k >= end:
                return
            cur.delete()

    def copy_range_to(self, group: int, start: bytes, end: bytes) -> None:
        """Copy the events of keys in [start, end) and the compacted revision to
        ``group`` (a split's new shard, whose revisions continue this group's)."""
        other = GroupHistory(self.txn, self.db, group)
        other.compact(self.compacted())
        for rev, n, record in self._raw(self.compacted() + 1):
            key = event_key(record)
            if start <= key and (not end or key < end):
                self.txn.put(_ev_key(group, rev, n), record, db=self.db)

    # -- reads ---------------------------------------------------------------------------
    def _raw(self, start: int) -> Iterator[tuple[int, int, bytes]]:
        cur = self.txn.cursor(db=self.db)
        end = keys.group_end(self.group)
        if not cur.set_range(_ev_key(self.group, start, 0)):
            return
        for k, v in cur:
            if k >= end:
                return
            _, rev, n = _EV.unpack(k)
            yield rev, n, v

    def events(
        self,
        start: int,
        lo: bytes,
        hi: bytes,
        upto: int,
        max_events: int = 0,
        max_bytes: int = 0,
        max_scanned: int = 0,
    ) -> tuple[list[Event], int]:
        """Events of keys in [lo, hi) (hi b"": to the end) with revisions in [start,
        upto] (``upto``: the revision applied as of this transaction), stopping between
        two revisions once ``max_events`` or ``max_bytes`` are reached, or ``max_scanned``
        events of any key were looked at (0: no cap; a narrow range's read otherwise
        filters the whole retained window at once). Returns them and the revision they
        are complete through: every event of the range up to it is in the list (``upto``
        unless a cap stopped the read). Raises Compacted when ``start`` is."""
        floor = self.compacted()
        if start <= floor:
            raise Compacted(start, floor)
        out: list[Event] = []
        size = 0
        at = 0
        for scanned, (rev, _, record) in enumerate(self._raw(start)):
            if rev > upto:
                break
            if rev != at:
                if (
                    (max_events and len(out) >= max_events)
                    or (max_bytes and size >= max_bytes)
                    or (max_scanned and scanned >= max_scanned)
                ):
                    return out, rev - 1
                at = rev
            key = event_key(record)
            if lo <= key and (not hi or key < hi):
                out.append(self._decode(rev, record))
                size += len(record)
        return out, max(upto, start - 1)

    def value_at(self, key: bytes, revision: int, current: KeyValue | None) -> KeyValue | None:
        """The key as of ``revision`` (``current``: as of now): the prev of its first event
        after ``revision``, else ``current``. Raises Compacted. Costs a scan of the
        events after ``revision`` up to the key's first, none when the key is unchanged
        since (a scan of the whole retained window, on a scan thread, for every such
        get before)."""
        floor = self.compacted()
        if revision <= floor:
            raise Compacted(revision, floor)
        if current is not None and current.mod_revision <= revision:
            return current  # not written since (a delete would have left it absent)
        for rev, _, record in self._raw(revision + 1):
            if event_key(record) == key:
                return self._decode(rev, record).prev
        return current

    def _decode(self, rev: int, record: bytes) -> Event:
        try:
            return decode_event(rev, record)
        except ValueError as e:
            raise CorruptionError(f"history event at {rev}: {e}", group=self.group) from e


def retain(history: GroupHistory, revision: int, keep: int, applied_events: int) -> None:
    """After an apply up to ``revision``: compact what falls out of a window of ``keep``
    revisions (0: keep all) and delete a bounded number of compacted events, at least
    as many as were just written, so deletion keeps pace with writes."""
    if keep and revision > keep:
        history.compact(revision - keep)
    history.sweep(max(SWEEP_EVENTS, 2 * applied_events))


class Moved(Exception):
    """The group no longer owns the key or range as of the read's snapshot (a split or
    merge applied after the request was routed): its history lacks the events another
    group now holds, so any answer from it could be wrong."""


def _check_owned(txn: Any, dbs: Any, group: int, lo: bytes, hi: bytes) -> None:
    record = txn.get(keys.meta_key(group, keys.TAG_SHARD), db=dbs.meta)
    if record is None:
        return  # not sharded: the group owns every key
    d = desc.decode(codec.unseal(group, record, "shard descriptor"))
    if not d.covers(lo, hi):
        raise Moved(f"shard {group} no longer holds {lo!r}..{hi!r}")


class FutureRevision(Exception):
    """The revision asked for is past the one the replica has applied."""

    def __init__(self, revision: int, current: int) -> None:
        super().__init__(f"revision {revision} is in the future: the shard is at {current}")
        self.revision = revision
        self.current = current


def applied_revision(txn: Any, dbs: Any, group: int) -> int:
    """The group's revision as of ``txn``: its applied index plus its revision offset;
    a frozen merge source's stops at its PrepareMerge (no entry after it changes
    anything, and the target's revisions continue above it)."""
    return applied_at(txn, dbs, group)[1]


def applied_at(txn: Any, dbs: Any, group: int) -> tuple[int, int]:
    """(applied index, revision) of the group as of ``txn`` (see applied_revision)."""
    record = txn.get(keys.meta_key(group, keys.TAG_APPLIED), db=dbs.meta)
    applied = 0 if record is None else codec.decode_u64(codec.unseal(group, record, "applied"))
    if not applied:
        record = txn.get(keys.group_prefix(group), db=dbs.snapshot)
        if record is not None:
            applied = codec.decode_base(codec.unseal(group, record, "log base")).index
    record = txn.get(keys.meta_key(group, keys.TAG_SHARD), db=dbs.meta)
    if record is None:
        return applied, applied
    d = desc.decode(codec.unseal(group, record, "shard descriptor"))
    last = min(applied, d.merge_index) if d.merging_into else applied
    return applied, last + d.revision_offset


class HistoryReader:
    """Reads of one group's history, each in one LMDB snapshot."""

    def __init__(self, storage: NodeStorage, group: int) -> None:
        self._st = storage
        self.group = group

    def revision(self) -> int:
        with self._st.env.begin() as txn:
            return applied_revision(txn, self._st.dbs, self.group)

    def get_at(self, key: bytes, revision: int) -> tuple[KeyValue | None, int, int, int]:
        """The key as of ``revision``, and the group's revision, applied index and
        applied time the read reflects. Raises Compacted, FutureRevision or Moved."""
        dbs = self._st.dbs
        with self._st.env.begin() as txn:
            _check_owned(txn, dbs, self.group, key, key + b"\0")
            tables = GroupTables(txn, dbs, self.group)
            applied, now = applied_at(txn, dbs, self.group)
            if revision > now:
                raise FutureRevision(revision, now)
            history = GroupHistory(txn, dbs.history, self.group)
            kv = history.value_at(key, revision, tables.get(key))
            return kv, now, applied, tables.applied_time()

    def events(
        self, start: int, lo: bytes, hi: bytes, max_events: int, max_bytes: int
    ) -> tuple[list[Event], int]:
        """Events of [lo, hi) from ``start`` on and the revision they are complete
        through (GroupHistory.events). Raises Compacted."""
        events, through, _ = self.events_now(start, lo, hi, max_events, max_bytes)
        return events, through

    def events_now(
        self,
        start: int,
        lo: bytes,
        hi: bytes,
        max_events: int,
        max_bytes: int,
        max_scanned: int = 0,
    ) -> tuple[list[Event], int, int]:
        """``events`` and the group's revision as of the same read. Raises Moved."""
        dbs = self._st.dbs
        with self._st.env.begin() as txn:
            _check_owned(txn, dbs, self.group, lo, hi)
            now = applied_revision(txn, dbs, self.group)
            history = GroupHistory(txn, dbs.history, self.group)
            events, through = history.events(start, lo, hi, now, max_events, max_bytes, max_scanned)
            return events, through, now

    def compacted(self) -> int:
        with self._st.env.begin() as txn:
            return GroupHistory(txn, self._st.dbs.history, self.group).compacted()


HISTORY_MARK = b"history_v1"
"""Node meta: the history table has been started for every group on this node."""


def start_history(txn: Any, dbs: Any) -> None:
    """Once per data directory: groups that applied entries before history existed get
    their history started at their applied revision (older revisions: compacted), so
    no reader takes the missing events for an empty stretch."""
    mark = keys.node_meta_key(HISTORY_MARK)
    if txn.get(mark, db=dbs.meta) is not None:
        return
    groups = set()
    for k in txn.cursor(db=dbs.meta).iternext(values=False):
        if not k.startswith(keys.NODE_META_PREFIX) and k[8:] == keys.TAG_APPLIED:
            groups.add(int.from_bytes(k[:8], "big"))
    for g in sorted(groups):
        GroupHistory(txn, dbs.history, g).compact(applied_revision(txn, dbs, g))
    txn.put(mark, b"1", db=dbs.meta)


class RecordingTables(GroupTables):
    """GroupTables that keeps an event for every put and delete of a user key, whatever
    applied it (a client write, a lease revoke): what the history must hold. Set
    ``revision`` to the entry's before applying it; take ``events`` after."""

    def __init__(self, txn: Any, dbs: Any, group: int, owned: Any = WHOLE) -> None:
        super().__init__(txn, dbs, group, owned)
        self.revision = 0
        self.events: list[Event] = []

    def put(self, kv: KeyValue) -> None:
        prev = self.get(kv.key)
        super().put(kv)
        self.events.append(Event(kv.mod_revision, EventKind.PUT, kv.key, kv, prev))

    def delete(self, key: bytes) -> None:
        prev = self.get(key)
        super().delete(key)
        if prev is not None:
            self.events.append(Event(self.revision, EventKind.DELETE, key, None, prev))
