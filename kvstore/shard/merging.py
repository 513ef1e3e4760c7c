"""Merge of two adjacent shards: the pure rules the state machine and the coordinator
apply (docs/sharding.md, "Merge"). No I/O.

Rules this module keeps:
- Only adjacent shards with the same voters, no learners (no move under way) and no
  merge of their own under way may merge; ``check_merge`` names what is wrong.
- ``prepare`` freezes the source (the right shard) at its PrepareMerge index L: from there
  on it applies no write, so its data is final at L. It records the target's epoch, and
  ``commit`` applies only while the target still has that epoch; the target's epoch only
  rises, so once a CommitMerge is refused every later one is too (a rollback is then safe).
- ``commit`` gives the survivor the union range, ``max(version) + 1`` and a revision
  offset that puts every later revision above everything either side wrote, so revisions
  never go back for any key.
- ``rollback`` unfreezes the source and raises its version, so nothing from the first
  attempt can be mistaken for a later one (TiKV #6460). It is safe only once no
  CommitMerge can apply: ``fence`` raises the target's version first (a CommitMerge
  ordered before the fence has then applied, and the target covers the source; none
  ordered after it can apply). A target that no longer exists needs no fence, and the
  shard map shows when (``target_merged_away``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from kvstore.shard.descriptor import Descriptor, Epoch
from kvstore.shard.split import SplitError, merge


class MergeError(SplitError):
    """The merge is not allowed (the message says why)."""


def check_merge(left: Descriptor, right: Descriptor) -> None:
    """Raise MergeError unless ``left`` may absorb ``right`` now."""
    if not left.end:
        raise MergeError(f"shard {left.id} is the last shard: it has no right neighbour")
    if left.end != right.start:
        raise MergeError(f"shards {left.id} and {right.id} are not adjacent")
    for d in (left, right):
        if d.merging_into:
            raise MergeError(f"shard {d.id} is already merging into shard {d.merging_into}")
        if d.learners:
            raise MergeError(
                f"shard {d.id} has learners {list(d.learners)}: a move is under way; "
                "retry when it is done"
            )
    if set(left.voters) != set(right.voters):
        raise MergeError(
            f"shards {left.id} and {right.id} are not on the same nodes (voters "
            f"{sorted(left.voters)} and {sorted(right.voters)}): move one shard's replicas "
            "first (kvstore shard move)"
        )


def prepare(source: Descriptor, target_id: int, index: int, target_epoch: Epoch) -> Descriptor:
    """The source as frozen by a PrepareMerge at ``index``."""
    if source.merging_into:
        raise MergeError(f"shard {source.id} is already merging into {source.merging_into}")
    if target_id == source.id or target_id <= 0:
        raise MergeError(f"shard {source.id} cannot merge into shard {target_id}")
    return replace(
        source, merging_into=target_id, merge_index=index, merge_target_epoch=target_epoch
    )


def commit(target: Descriptor, source: Descriptor, index: int) -> Descriptor:
    """The target after absorbing the prepared ``source`` with the CommitMerge at
    ``index`` of its own log."""
    if source.merging_into != target.id:
        raise MergeError(f"shard {source.id} is not prepared to merge into shard {target.id}")
    if target.epoch != source.merge_target_epoch:
        raise MergeError(
            f"shard {target.id} changed since the merge was prepared (epoch {target.epoch}, "
            f"prepared against {source.merge_target_epoch})"
        )
    if target.merging_into:
        raise MergeError(f"shard {target.id} is itself merging into {target.merging_into}")
    if set(target.voters) != set(source.voters) or set(target.learners) != set(source.learners):
        raise MergeError(f"shards {target.id} and {source.id} do not have the same replicas")
    merged = merge(target, replace(source, merging_into=0))
    # The source wrote revisions up to merge_index + its offset; the target up to index
    # + its offset. The next entry (index + 1) must be above both.
    offset = max(target.revision_offset, source.merge_index + source.revision_offset - index)
    return replace(merged, revision_offset=offset)


def fence(target: Descriptor) -> Descriptor:
    """The target after a FenceMerge: one version up, nothing else changed."""
    if target.merging_into:
        raise MergeError(f"shard {target.id} is itself merging into {target.merging_into}")
    return replace(target, epoch=Epoch(target.epoch.version + 1, target.epoch.conf_ver))


def target_merged_away(source: Descriptor, shard_map: Iterable[Descriptor]) -> bool:
    """Can no CommitMerge of the frozen ``source`` ever apply, nor have applied, because
    its target was itself merged away (a merge chain: the target was frozen as another
    merge's source while this one was pending)? From the shard map: the target's id is
    gone (only a merge absorbing it removes an id, and a frozen target applies no
    CommitMerge), the source's id is still there (had the target absorbed it first, the
    report of the merge that absorbed the target covers the source too, and replaces it
    in the same step), and the shard that now ends where the source starts is newer than
    the target the prepare recorded (a target never reported yet, its parent still in
    the map, is older)."""
    ids = {d.id: d for d in shard_map}
    if not source.merging_into or source.merging_into in ids or source.id not in ids:
        return False
    left = next((d for d in ids.values() if d.end == source.start), None)
    return left is not None and left.epoch.version > source.merge_target_epoch.version


def rollback(source: Descriptor) -> Descriptor:
    """The source unfrozen after a RollbackMerge, one version up."""
    if not source.merging_into:
        raise MergeError(f"shard {source.id} is not merging")
    return replace(
        source,
        epoch=Epoch(source.epoch.version + 1, source.epoch.conf_ver),
        merging_into=0,
        merge_index=0,
        merge_target_epoch=Epoch(),
    )
