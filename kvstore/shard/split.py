"""Split and merge of descriptors: the pure rules the state machine applies. No I/O.

Rule: a split turns one descriptor into two that cover exactly its range, both with
``version + 1``; a merge turns two adjacent ones into one with ``max(version) + 1``. A
version therefore only rises, and a merge followed by a re-split at the same key never
reproduces an earlier descriptor. Bad requests raise SplitError naming why.
"""

from __future__ import annotations

from dataclasses import replace

from kvstore.shard.descriptor import Descriptor, Epoch

DEFAULT_SPLIT_SIZE = 64 * 1024 * 1024
"""``serve --split-size`` default: a shard whose keys and values pass this many bytes is
split automatically at the middle of its data (TiKV splits regions near 96 MiB)."""
DEFAULT_SPLIT_KEY_COUNT = 500_000
"""``serve --split-key-count`` default: the same for a shard holding this many keys."""


class SplitError(ValueError):
    """The split or merge is not allowed (the message says why)."""


def check_split_key(d: Descriptor, at: bytes) -> None:
    if not at or at <= d.start or (d.end and at >= d.end):
        end = repr(d.end) if d.end else "+inf"
        raise SplitError(
            f"split key {at!r} is not strictly inside shard {d.id}'s range [{d.start!r}, {end})"
        )


def split(d: Descriptor, at: bytes, new_id: int) -> tuple[Descriptor, Descriptor]:
    """(left, right): ``d`` keeps [start, at), ``new_id`` gets [at, end)."""
    check_split_key(d, at)
    if new_id == d.id or new_id <= 0:
        raise SplitError(f"new shard id {new_id} is not a fresh id")
    epoch = Epoch(d.epoch.version + 1, d.epoch.conf_ver)
    left = replace(d, end=at, epoch=epoch)
    right = replace(d, id=new_id, start=at, epoch=epoch)
    return left, right


def merge(left: Descriptor, right: Descriptor) -> Descriptor:
    """``left`` absorbs ``right``; they must be adjacent with the same replicas."""
    if not left.end or left.end != right.start:
        raise SplitError(f"shards {left.id} and {right.id} are not adjacent")
    if left.replicas != right.replicas:
        raise SplitError(f"shards {left.id} and {right.id} do not have the same replicas")
    version = max(left.epoch.version, right.epoch.version) + 1
    return replace(left, end=right.end, epoch=Epoch(version, left.epoch.conf_ver))
