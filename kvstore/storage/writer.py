"""Writer: everything one LMDB write transaction does to a node's groups.

Invariant: a Writer only stages; GroupLog views change when NodeStorage commits the
transaction (then ``publish()`` hands out the new views) and never if it aborts. Within
the transaction each group's pending view tracks exactly what the transaction wrote.
Shard admin entries (split, merge, Compact) apply through storage/shard_apply.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from kvstore.consensus.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMetadata,
    has_membership,
)
from kvstore.shard import commands as shard_cmds
from kvstore.shard import descriptor as desc
from kvstore.shard.descriptor import Descriptor
from kvstore.statemachine.apply import advance_applied_time, apply_commands
from kvstore.statemachine.commands import BatchDecodeError, decode_entry
from kvstore.statemachine.types import ApplyResult
from kvstore.storage import codec, keys, shard_apply, tombstone
from kvstore.storage.errors import CorruptionError
from kvstore.storage.history import GroupHistory, RecordingTables, retain
from kvstore.storage.log import LogView, cap_tail, read_entry, read_members
from kvstore.storage.snapshot import image_records
from kvstore.storage.tables import WHOLE, Dbs, GroupTables, delete_range, owned_range, owns

SWEEP_SESSIONS = 64
"""Sessions a persist checks for expiry at least (one set_range each)."""


@dataclass(slots=True, kw_only=True)
class _Pending:
    """A group's view as staged by the current transaction."""

    base: SnapshotMetadata
    last_index: int
    last_term: int
    applied: int
    hard_state: HardState
    conf_state: ConfState
    tail: list[Entry]
    cache_entries: int
    shard: Descriptor | None = None

    def view(self) -> LogView:
        return LogView(
            base=self.base,
            last_index=self.last_index,
            last_term=self.last_term,
            applied=self.applied,
            hard_state=self.hard_state,
            conf_state=self.conf_state,
            tail=cap_tail(self.tail, self.cache_entries),
            shard=self.shard,
        )


def _frozen(key: bytes) -> bool:
    return False


class Writer:
    """Stages writes in one LMDB write transaction; get one from ``NodeStorage.write()``."""

    def __init__(
        self,
        txn: Any,
        dbs: Dbs,
        views: Any,
        cache_entries: int,
        sweep_from: dict[int, bytes] | None = None,
        history_revisions: int = 0,
    ) -> None:
        self._txn = txn
        self._history_revisions = history_revisions
        """Revisions each group's history keeps (0: all, until compacted)."""
        self._sweep_from = {} if sweep_from is None else sweep_from
        """Per group, where the next session sweep starts (kept by NodeStorage across
        transactions; where the sweep stands changes no answer, see statemachine.apply)."""
        self._cache_entries = cache_entries
        self._dbs = dbs
        self._views = views
        """Callable group -> committed LogView (loads the group on first use)."""
        self._pending: dict[int, _Pending] = {}
        self.dropped: set[int] = set()
        """Groups dropped in this transaction (their cached snapshots must go too)."""
        self.undecodable = 0
        """NORMAL entries whose data did not decode as a batch (applied as nothing)."""
        self.must_flush = False
        """A shard admin entry applied here: the transaction is flushed as durable even when
        written as ``durable=False`` (storage/env.py). What it applies leaves the node in
        ways a re-apply cannot take back: a merge coordinator commits a merge once every
        source replica's Status shows its PrepareMerge applied, and then the source's other
        replicas are destroyed, so a power loss undoing this node's apply left its source
        short of the merge index with no leader to commit it again, and the CommitMerge
        then absorbed an incomplete source (lost writes on this replica)."""
        self.created: list[int] = []
        """Groups a split created on this node in this transaction (the driver starts them)."""
        self.merged: list[tuple[int, int]] = []
        """(target, source) of merges applied here in this transaction: the source's
        replica is gone from storage (the driver stops it)."""
        self.merged_away: set[int] = set()
        """Merge sources whose state a CommitMerge, or a snapshot of the merged target
        (shard_apply.absorb_frozen_sources), destroyed in this transaction. The driver
        persists every group's Ready in one transaction, so the source's own Ready may
        come after the target's: it must change nothing but the source's tombstone (the
        replica is gone; the driver stops it after the persist), not write into the
        destroyed state (a log with a gap: the transaction failed and the driver
        stopped)."""
        self.merge_anomalies: list[str] = []
        """CommitMerges applied while the local source replica was not as the coordinator
        saw it (impossible unless a node lost durable state; the driver logs them)."""
        self.admin_results: dict[int, dict[int, int]] = {}
        """group -> entry index -> result of the admin command there (see shard.commands;
        a refused split: 0)."""

    def publish(self) -> dict[int, LogView]:
        return {g: p.view() for g, p in self._pending.items()}

    def _group(self, group: int) -> _Pending:
        p = self._pending.get(group)
        if p is None:
            v: LogView = self._views(keys.check_group(group))
            p = _Pending(
                base=v.base,
                last_index=v.last_index,
                last_term=v.last_term,
                applied=v.applied,
                hard_state=v.hard_state,
                conf_state=v.conf_state,
                tail=list(v.tail),
                cache_entries=self._cache_entries,
                shard=v.shard,
            )
            self._pending[group] = p
        return p

    def _put_sealed(self, db: Any, key: bytes, group: int, payload: bytes) -> None:
        self._txn.put(key, codec.seal(group, payload), db=db)

    # -- node-level -----------------------------------------------------------
    def set_meta(self, key: bytes, value: bytes) -> None:
        """Node-level metadata (cluster id, node id, consensus kind)."""
        self._txn.put(keys.node_meta_key(key), value, db=self._dbs.meta)

    # -- the Ready persist -----------------------------------------------------
    def save(
        self,
        group: int,
        hard_state: HardState | None = None,
        entries: Sequence[Entry] = (),
        snapshot: Snapshot | None = None,
    ) -> None:
        """Persist one Ready's ``snapshot``, ``entries`` and ``hard_state`` for ``group``
        (in that order). A snapshot newer than the applied index replaces the group's log,
        kv and sessions (older ones are ignored, as in MemoryStorage). Entries at or below
        the log base are dropped; an entry at an index already stored replaces it and
        everything after it (the Ready rule). Raises ValueError on a gap after the last
        index, CorruptionError on a snapshot image that does not verify. A merge source
        destroyed earlier in this transaction keeps only ``hard_state``, in its
        tombstone (see ``merged_away``)."""
        if group in self.merged_away:
            if hard_state is not None:
                # Its vote or promise leaves the node after this persist with the rest of
                # the batch's messages: the tombstone must hold it (tombstone.py).
                # Its acknowledgements too: the entries were not stored, but their acks
                # leave with the batch.
                p = self._group(group)
                last, last_term = (entries[-1].index, entries[-1].term) if entries else (0, 0)
                p.hard_state = tombstone.keep(
                    self._txn, self._dbs, group, hard_state, last, last_term
                )
            return
        p = self._group(group)
        if snapshot is not None and not snapshot.is_empty():
            self._install(group, p, snapshot)
        elif snapshot is not None and not has_membership(p.base.conf_state):
            # A joiner's base membership (the join contract in consensus/types.py).
            self._set_base(group, p, replace(p.base, conf_state=snapshot.metadata.conf_state))
            if not has_membership(p.conf_state):
                self._store_conf(group, p, snapshot.metadata.conf_state)
        if entries:
            self._append(group, p, entries)
        if hard_state is not None and group in self.created:
            # The Ready of a replica that ran here with no state (a vote request started
            # it) while a split in this transaction gave the group its state: keep the
            # split's commit and that replica's term and vote (shard_apply._split).
            commit = max(hard_state.commit, p.hard_state.commit)
            hard_state = replace(tombstone.floor(hard_state, p.hard_state), commit=commit)
        if hard_state is not None and hard_state != p.hard_state:
            key = keys.meta_key(group, keys.TAG_HARD_STATE)
            self._put_sealed(self._dbs.meta, key, group, codec.encode_hard_state(hard_state))
            p.hard_state = hard_state

    def _append(self, group: int, p: _Pending, entries: Sequence[Entry]) -> None:
        ents = [e for e in entries if e.index > p.base.index]
        if not ents:
            return
        first = ents[0].index
        for i, e in enumerate(ents):
            if e.index != first + i:
                raise ValueError(f"group {group}: entries not contiguous at {e.index}")
        if first > p.last_index + 1:
            raise ValueError(f"group {group}: gap, appending {first} after {p.last_index}")
        new_last = ents[-1].index
        if new_last < p.last_index:
            lo, hi = keys.log_key(group, new_last + 1), keys.log_key(group, p.last_index + 1)
            delete_range(self._txn, self._dbs.log, lo, hi)
        put, db = self._txn.put, self._dbs.log
        for e in ents:
            put(keys.log_key(group, e.index), codec.encode_entry(group, e), db=db)
        tail_start = p.last_index - len(p.tail) + 1
        if first > tail_start:
            del p.tail[first - tail_start :]
            p.tail.extend(ents)
        else:
            p.tail = list(ents)
        if len(p.tail) > 2 * p.cache_entries:  # trim now and then, not on every append
            del p.tail[: -p.cache_entries or None]
        p.last_index = new_last
        p.last_term = ents[-1].term

    def _install(self, group: int, p: _Pending, snap: Snapshot) -> None:
        meta = snap.metadata
        if meta.index <= p.applied or meta.index <= p.base.index:
            return
        # Record by record into this transaction (the image may be far larger than
        # memory): a damaged image raises, at the latest at its checksum, and the whole
        # transaction aborts.
        with image_records(group, meta.index, snap.data) as image:
            try:
                shard = desc.decode(image.shard) if image.shard else None
                members = codec.decode_members(image.members)
            except ValueError as e:
                raise CorruptionError(f"snapshot image sections: {e}", group=group) from e
            lo, hi = keys.group_prefix(group), keys.group_end(group)
            delete_range(self._txn, self._dbs.log, lo, hi)
            if shard is not None:
                shard_apply.absorb_frozen_sources(self, group, shard)
                self._set_shard(group, p, shard)
            GroupTables(self._txn, self._dbs, group, owned_range(group, p.shard)).replace(
                image.kv(), image.sessions()
            )
            image.finish()
        # The image carries no history: this replica's starts at the image's revision.
        offset = p.shard.revision_offset if p.shard is not None else 0
        GroupHistory(self._txn, self._dbs.history, group).reset(meta.index + offset)
        if image.meta_state:
            self._put_sealed(
                self._dbs.meta, keys.meta_key(group, keys.TAG_META_STATE), group, image.meta_state
            )
        self._put_members(group, members)
        self._set_base(group, p, meta)
        self._set_applied(group, p, meta.index)
        self._store_conf(group, p, meta.conf_state)
        p.last_index, p.last_term, p.tail = meta.index, meta.term, []

    def _set_shard(self, group: int, p: _Pending, shard: Descriptor) -> None:
        key = keys.meta_key(group, keys.TAG_SHARD)
        self._put_sealed(self._dbs.meta, key, group, desc.encode(shard))
        p.shard = shard

    def _set_base(self, group: int, p: _Pending, meta: SnapshotMetadata) -> None:
        key = keys.group_prefix(group)
        self._put_sealed(self._dbs.snapshot, key, group, codec.encode_base(meta))
        p.base = meta

    def _set_applied(self, group: int, p: _Pending, index: int) -> None:
        key = keys.meta_key(group, keys.TAG_APPLIED)
        self._put_sealed(self._dbs.meta, key, group, codec.encode_u64(index))
        p.applied = index

    def _store_conf(self, group: int, p: _Pending, cs: ConfState) -> None:
        key = keys.meta_key(group, keys.TAG_CONF_STATE)
        self._put_sealed(self._dbs.meta, key, group, codec.encode_conf_state(cs))
        p.conf_state = cs

    # -- the state machine -------------------------------------------------------
    def apply(self, group: int, entries: Sequence[Entry]) -> list[ApplyResult]:
        """Apply committed entries in index order and advance the applied index in this
        same transaction (so a restart never applies an entry twice).

        Returns ONE FLAT LIST: the results of every command of every NORMAL entry, in
        log order and, within an entry, in batch order; each result's ``index`` names
        its entry. NOOP and CONF_CHANGE entries and empty NORMAL entries yield no
        result (persist a CONF_CHANGE's new membership with ``set_conf_state``). A
        NORMAL entry whose data does not decode applies as nothing (no result, counted
        in ``undecodable``): every replica skips it the same way.

        Entries at or below the applied index are skipped; a gap raises ValueError.

        Then drops expired client sessions, a bounded number per call (SWEEP_SESSIONS, or
        as many as commands applied when more, so the sweep keeps pace with new sessions):
        a persist never pays for the whole session table."""
        if group in self.merged_away:
            return []
        p = self._group(group)
        tables = RecordingTables(self._txn, self._dbs, group, owned_range(group, p.shard))
        history = GroupHistory(self._txn, self._dbs.history, group)
        out: list[ApplyResult] = []
        applied = p.applied
        for e in entries:
            if e.index <= applied:
                continue
            if e.index != applied + 1:
                raise ValueError(f"group {group}: applying {e.index} after applied {applied}")
            applied = e.index
            if e.type == EntryType.NORMAL and shard_cmds.is_admin(e.data):
                self.must_flush = True
                tables.flush()  # a split copies the sessions as stored
                shard_apply.apply_admin(self, group, p, e)
                tables = RecordingTables(self._txn, self._dbs, group, owned_range(group, p.shard))
            elif e.type == EntryType.NORMAL and e.data:
                try:
                    batch = decode_entry(e.data)
                except BatchDecodeError:
                    self.undecodable += 1
                else:
                    owned = tables.owned
                    check: Callable[[bytes], bool] | None = (
                        None if owned == WHOLE else partial(owns, owned)
                    )
                    offset = 0
                    if p.shard is not None:
                        offset = p.shard.revision_offset
                        if p.shard.merging_into:
                            check = _frozen  # a prepared merge source takes no write
                    frozen = check is _frozen
                    tables.revision = e.index + offset
                    rs = apply_commands(
                        tables, e.index, batch.commands, check, batch.time_ms, offset, frozen
                    )
                    if not frozen:  # a frozen source's time stays at its prepare
                        t = advance_applied_time(tables, batch.stamp)
                        # Writes may be answered before the commit (replica.answer_applied):
                        # each answer carries its entry's time, the client's causal token.
                        rs = [replace(r, time=t) for r in rs]
                    if tables.events:
                        history.append(tables.events)
                        tables.events = []
                    out += rs
            elif e.type == EntryType.CONF_CHANGE and p.shard is not None:
                shard_apply.bump_conf_ver(self, group, p, e.data)
        if applied != p.applied:
            if p.shard is None or not p.shard.merging_into:
                # Not in a frozen merge source: its session table stays as at its prepare
                # (statemachine.apply_commands' ``frozen``).
                budget = max(SWEEP_SESSIONS, len(out))
                start = self._sweep_from.get(group, b"")
                self._sweep_from[group] = tables.sweep_sessions(start, applied, budget)
            tables.flush()
            self._set_applied(group, p, applied)
            offset = p.shard.revision_offset if p.shard is not None else 0
            retain(history, applied + offset, self._history_revisions, len(out))
        return out

    def set_conf_state(self, group: int, conf_state: ConfState) -> None:
        """Persist the membership in effect (after applying a CONF_CHANGE entry)."""
        if group in self.merged_away:
            return
        p = self._group(group)
        if conf_state != p.conf_state:
            self._store_conf(group, p, conf_state)

    def set_member_address(self, group: int, node_id: int, address: str) -> None:
        """Record (``address`` "": forget) a member's address, with the membership change
        that gave it, in this transaction."""
        if group in self.merged_away:
            return
        members = read_members(self._txn, self._dbs, group)
        if address:
            members[node_id] = address
        else:
            members.pop(node_id, None)
        self._put_members(group, members)

    def _put_members(self, group: int, members: dict[int, str]) -> None:
        key = keys.meta_key(group, keys.TAG_MEMBERS)
        if members:
            self._put_sealed(self._dbs.meta, key, group, codec.encode_members(members))
        else:
            self._txn.delete(key, db=self._dbs.meta)

    def compact(self, group: int, index: int) -> None:
        """Drop log entries <= ``index``; the entry at ``index`` becomes the log base.
        No-op at or below the current base; ValueError past the applied index."""
        if group in self.merged_away:
            return
        p = self._group(group)
        if index <= p.base.index:
            return
        if index > p.applied or index > p.last_index:
            raise ValueError(
                f"group {group}: cannot compact to {index} (applied {p.applied}, "
                f"last {p.last_index})"
            )
        e = read_entry(self._txn, self._dbs, group, index)
        if e is None:
            raise CorruptionError("entry missing from the log", group=group, index=index)
        lo, hi = keys.log_key(group, p.base.index + 1), keys.log_key(group, index + 1)
        delete_range(self._txn, self._dbs.log, lo, hi)
        meta = SnapshotMetadata(index=index, term=e.term, conf_state=p.conf_state)
        self._set_base(group, p, meta)
        tail_start = p.last_index - len(p.tail) + 1
        if index >= tail_start:
            del p.tail[: index - tail_start + 1]

    def drop_group(self, group: int) -> None:
        """Delete everything of ``group`` (a replica moved away): log, metadata, log base,
        kv and sessions, leaving its tombstone. The group then looks brand new but for
        its hard state, the tombstone's (and may be bootstrapped again)."""
        p = self._group(group)
        GroupTables(self._txn, self._dbs, group, owned_range(group, p.shard)).delete_owned()
        self._destroy_state(group, p)

    def _destroy_state(self, group: int, p: _Pending) -> None:
        """Delete ``group``'s log, metadata, log base and sessions, not its user keys,
        and keep its tombstone (tombstone.py) in the same transaction."""
        self.dropped.add(group)
        kept = tombstone.keep(self._txn, self._dbs, group, p.hard_state, p.last_index, p.last_term)
        lo, hi = keys.group_prefix(group), keys.group_end(group)
        for db in (self._dbs.log, self._dbs.meta, self._dbs.sessions, self._dbs.history):
            delete_range(self._txn, db, lo, hi)
        self._txn.delete(lo, db=self._dbs.snapshot)
        fresh = LogView()
        p.base, p.last_index, p.last_term, p.applied = fresh.base, 0, 0, 0
        p.hard_state, p.conf_state, p.tail = kept, fresh.conf_state, []
        p.shard = None

    def bootstrap(
        self,
        group: int,
        conf_state: ConfState,
        shard: Descriptor | None = None,
        meta_state: bytes | None = None,
        initial_index: int = 0,
    ) -> bool:
        """See GroupLog.bootstrap."""
        p = self._group(group)
        fresh = LogView()
        tomb = tombstone.read(self._txn, self._dbs, group)
        if (
            p.base != fresh.base
            or p.last_index
            or p.applied
            or p.hard_state != tombstone.floor(fresh.hard_state, tomb)
            or p.conf_state != fresh.conf_state
        ):
            return False
        base = replace(fresh.base, conf_state=conf_state)
        if initial_index:
            base = SnapshotMetadata(index=initial_index, term=initial_index, conf_state=conf_state)
            self._set_applied(group, p, initial_index)
            hs = tombstone.floor(HardState(term=initial_index, commit=initial_index), tomb)
            key = keys.meta_key(group, keys.TAG_HARD_STATE)
            self._put_sealed(self._dbs.meta, key, group, codec.encode_hard_state(hs))
            p.hard_state = hs
            p.last_index = p.last_term = initial_index
        self._set_base(group, p, base)
        self._store_conf(group, p, conf_state)
        if shard is not None:
            self._set_shard(group, p, shard)
        if meta_state is not None:
            key = keys.meta_key(group, keys.TAG_META_STATE)
            self._put_sealed(self._dbs.meta, key, group, meta_state)
        return True
