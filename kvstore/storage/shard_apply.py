"""Shard admin entries applied in a Writer's transaction: split, the merge steps, Compact,
the meta group's placement commands, and the descriptor's conf_ver on membership changes.

Rule: whether an admin entry applies, and what it answers, depends only on the group's
state as of that entry and the command, so every replica decides alike; a malformed or
refused one applies as nothing (result 0). What a split or merge moves goes in the
entry's own transaction, never one without the other (TiKV #7002):
- a split: the right half is a new group starting at this entry, sharing the data,
  with a copy of the sessions; each half keeps the lease attachments of the keys it owns
  (storage/leases.py) and the new half's history starts as the parent's, for its range;
- a merge: the local source replica's state is destroyed and the target's history is
  compacted up to the source's last revision (storage/history.py), so no watch resumes
  across the source's events;
- Compact: never past the entry's own revision (a future revision compacts to now).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    HardState,
    SnapshotMetadata,
)
from kvstore.shard import commands as shard_cmds
from kvstore.shard import merging as shard_merge
from kvstore.shard.descriptor import META_GROUP, Descriptor, Epoch
from kvstore.shard.split import SplitError
from kvstore.shard.split import split as split_shard
from kvstore.storage import codec, keys, tombstone
from kvstore.storage.history import GroupHistory
from kvstore.storage.log import LogView
from kvstore.storage.tables import GroupTables, owned_range, owns

if TYPE_CHECKING:
    from kvstore.storage.writer import Writer, _Pending


def absorb_frozen_sources(w: Writer, group: int, shard: Descriptor) -> None:
    """A snapshot of a merge target that covers a local merge source frozen into it
    (this replica lagged past the CommitMerge): destroy that source in this same
    transaction (TiKV #7002: never one without the other); the image holds its
    range's data. Scans the stored descriptors: snapshots are rare."""
    tag = keys.TAG_SHARD
    cur = w._txn.cursor(db=w._dbs.meta)
    found = []
    for k in cur.iternext(values=False):
        if len(k) == 9 and k[8:] == tag and not k.startswith(keys.NODE_META_PREFIX):
            found.append(int.from_bytes(k[:8], "big"))
    for gid in found:
        q = w._group(gid)
        d = q.shard
        if gid != group and d is not None and d.merging_into == group and d.overlaps(shard):
            w._destroy_state(gid, q)
            w.merged_away.add(gid)  # its own Ready later in this persist changes nothing
            w.merged.append((group, gid))


def apply_admin(w: Writer, group: int, p: _Pending, e: Entry) -> None:
    """Apply one admin entry (shard.commands); a malformed or refused one applies as
    nothing (result 0), the same way on every replica."""
    try:
        cmd = shard_cmds.decode(e.data)
    except ValueError:
        w.undecodable += 1
        return
    result = 0
    if isinstance(cmd, shard_cmds.Split):
        result = _split(w, group, p, e, cmd)
    elif isinstance(cmd, shard_cmds.PrepareMerge):
        result = _prepare_merge(w, group, p, e, cmd)
    elif isinstance(cmd, shard_cmds.CommitMerge):
        result = _commit_merge(w, group, p, e, cmd)
    elif isinstance(cmd, shard_cmds.RollbackMerge):
        result = _rollback_merge(w, group, p, cmd)
    elif isinstance(cmd, shard_cmds.FenceMerge):
        result = _fence_merge(w, group, p)
    elif isinstance(cmd, shard_cmds.Compact):
        # Never past this entry's revision: a future revision compacts to now.
        now = e.index + (p.shard.revision_offset if p.shard is not None else 0)
        history = GroupHistory(w._txn, w._dbs.history, group)
        result = history.compact(min(cmd.revision, now))
    elif group == META_GROUP:
        key = keys.meta_key(group, keys.TAG_META_STATE)
        record = w._txn.get(key, db=w._dbs.meta)
        if record is not None:
            state = shard_cmds.MetaState.decode(codec.unseal(group, record, "meta state"))
            result = state.apply(cmd)
            w._put_sealed(w._dbs.meta, key, group, state.encode())
    w.admin_results.setdefault(group, {})[e.index] = result


def _split(w: Writer, group: int, p: _Pending, e: Entry, cmd: shard_cmds.Split) -> int:
    """Split this group at ``cmd.at`` (docs/sharding.md): the left half stays, the
    right half becomes group ``cmd.new_id`` starting at this entry, sharing the data
    (no copy) and a copy of the sessions. Returns the new id, or 0 when refused (the
    epoch moved on or the key is not inside the range)."""
    d = p.shard
    if d is None or d.epoch != cmd.epoch or d.merging_into:
        return 0
    try:
        left, right = split_shard(d, cmd.at, cmd.new_id)
    except SplitError:
        return 0
    w._set_shard(group, p, left)
    c = w._group(keys.check_group(cmd.new_id))
    fresh = LogView()
    if c.shard is not None or c.last_index or c.applied or c.base != fresh.base:
        # A replica of the new shard already exists here (a snapshot from its leader
        # reached this node before this replica applied the split): keep it.
        return cmd.new_id
    # The members as of this entry are the descriptor's (kept entry by entry), not
    # p.conf_state: the driver records the membership after the whole apply, so a
    # conf change applied in the same persist would be missing, and replicas that
    # batched differently would disagree on the new group's voters. A split inside
    # a joint change starts the new group in the incoming configuration.
    cs = ConfState(voters=frozenset(d.voters), learners=frozenset(d.learners))
    base = SnapshotMetadata(index=e.index, term=e.term, conf_state=cs)
    w._set_base(cmd.new_id, c, base)
    w._set_applied(cmd.new_id, c, e.index)
    w._store_conf(cmd.new_id, c, cs)
    c.last_index, c.last_term, c.tail = e.index, e.term, []
    # A replica of the new shard destroyed here before (its tombstone), or one that ran
    # here with no state and answered a vote request (lifecycle.receive_unknown), voted
    # or promised in its terms: the group keeps those promises (tombstone.py).
    hs = tombstone.floor(HardState(term=e.term, commit=e.index), c.hard_state)
    key = keys.meta_key(cmd.new_id, keys.TAG_HARD_STATE)
    w._put_sealed(w._dbs.meta, key, cmd.new_id, codec.encode_hard_state(hs))
    c.hard_state = hs
    w._set_shard(cmd.new_id, c, right)
    GroupTables(w._txn, w._dbs, group).copy_sessions_to(cmd.new_id)
    # Each half keeps the lease attachments of the keys it owns (storage/leases.py).
    GroupTables(w._txn, w._dbs, group).leases.prune(partial(owns, (left.start, left.end)))
    GroupTables(w._txn, w._dbs, cmd.new_id).leases.prune(partial(owns, (right.start, right.end)))
    # The new shard's revisions continue this one's: its history starts as the
    # parent's, for its range.
    history = GroupHistory(w._txn, w._dbs.history, group)
    history.copy_range_to(cmd.new_id, right.start, right.end)
    w.created.append(cmd.new_id)
    return cmd.new_id


def _prepare_merge(
    w: Writer, group: int, p: _Pending, e: Entry, cmd: shard_cmds.PrepareMerge
) -> int:
    """Freeze this group (the source) for a merge into ``cmd.target``: from this entry
    on it applies no write. Returns this entry's index (0: refused, the epoch moved
    on or a merge is already prepared)."""
    d = p.shard
    if d is None or d.epoch != cmd.source_epoch:
        return 0
    try:
        frozen = shard_merge.prepare(d, cmd.target, e.index, cmd.target_epoch)
    except SplitError:
        return 0
    w._set_shard(group, p, frozen)
    return e.index


def _commit_merge(w: Writer, group: int, p: _Pending, e: Entry, cmd: shard_cmds.CommitMerge) -> int:
    """This group (the target) absorbs the prepared source, in this transaction:
    range extended, version max + 1, revision offset raised, sessions merged, and the
    local source replica's state destroyed (its user keys stay: this group owns them
    now). Whether it applies depends only on this group's state and the command
    (every replica decides alike); the coordinator proposed it only after every
    source replica had applied the PrepareMerge, so the local one is complete.
    Returns the merged version (0: refused)."""
    d, src = p.shard, cmd.source
    if d is None:
        return 0
    try:
        merged = shard_merge.commit(d, src, e.index)
    except SplitError:
        return 0
    s = w._group(keys.check_group(src.id))
    if s.shard != src or s.applied < src.merge_index:
        w.merge_anomalies.append(
            f"group {group} merged {src.describe()} at {e.index} while the local "
            f"replica of {src.id} was {s.shard and s.shard.describe()} applied {s.applied}"
        )
    if s.shard is not None and s.shard.id == src.id:
        GroupTables(w._txn, w._dbs, group, owned_range(group, d)).merge_sessions_from(
            src.id, e.index, src.merge_index
        )
        w._destroy_state(src.id, s)
        w.merged_away.add(src.id)
    # The source's history goes with it: no resume may start at or below its last
    # revision (a watcher that had not seen all of it gets the compacted error
    # instead of a silent gap; docs/watch.md).
    GroupHistory(w._txn, w._dbs.history, group).compact(src.merge_index + src.revision_offset)
    w._set_shard(group, p, merged)
    w.merged.append((group, src.id))
    return merged.epoch.version


def _fence_merge(w: Writer, group: int, p: _Pending) -> int:
    if p.shard is None:
        return 0
    try:
        fenced = shard_merge.fence(p.shard)
    except SplitError:
        return 0
    w._set_shard(group, p, fenced)
    return fenced.epoch.version


def _rollback_merge(w: Writer, group: int, p: _Pending, cmd: shard_cmds.RollbackMerge) -> int:
    d = p.shard
    if d is None or d.epoch != cmd.source_epoch or not d.merging_into:
        return 0
    back = shard_merge.rollback(d)
    w._set_shard(group, p, back)
    return back.epoch.version


def bump_conf_ver(w: Writer, group: int, p: _Pending, data: bytes) -> None:
    """A membership change raises the descriptor's conf_ver, entry by entry."""
    assert p.shard is not None
    try:
        cc = ConfChange.decode(data)
    except ValueError:
        return
    voters, learners = set(p.shard.voters), set(p.shard.learners)
    # A joint change makes several at once (the descriptor holds its incoming half);
    # leaving it changes no member.
    for part in cc.singles():
        if part.type == ConfChangeType.ADD_LEARNER:
            learners.add(part.node_id)
            voters.discard(part.node_id)
        elif part.type == ConfChangeType.ADD_NODE:
            voters.add(part.node_id)
            learners.discard(part.node_id)
        else:
            voters.discard(part.node_id)
            learners.discard(part.node_id)
    epoch = Epoch(p.shard.epoch.version, p.shard.epoch.conf_ver + 1)
    shard = replace(
        p.shard, epoch=epoch, voters=tuple(sorted(voters)), learners=tuple(sorted(learners))
    )
    w._set_shard(group, p, shard)
