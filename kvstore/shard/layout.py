"""The initial layout of a sharded cluster, computed the same way by every node. No I/O.

Rule: ``initial_map(nodes, shards, replicas, split_keys)`` depends only on its arguments,
so nodes started with the same flags agree on the map without talking. Shard ``i``
(0-based) gets id ``i + 1`` and voters on ``replicas`` consecutive nodes starting at the
``i``-th (mod N), which spreads replicas and first leaders evenly. The meta group
(``META_GROUP``) lives on the first ``replicas`` nodes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from kvstore.shard.descriptor import Descriptor
from kvstore.shard.shardmap import ShardMap

DEFAULT_REPLICAS = 3
_LETTERS = 26


def default_split_keys(shards: int) -> list[bytes]:
    """``shards - 1`` keys spread evenly over lowercase words (keys people type), so a
    fresh cluster's keys land on different shards: one letter up to 26 shards
    (4 shards: g, n, t), two letters up to 676."""
    if shards < 1:
        raise ValueError(f"--shards must be >= 1, got {shards}")
    if shards <= _LETTERS:
        return [bytes([0x61 + _LETTERS * i // shards]) for i in range(1, shards)]
    if shards > _LETTERS * _LETTERS:
        raise ValueError(f"--shards {shards} is too many for the default split keys")
    out = []
    for i in range(1, shards):
        v = _LETTERS * _LETTERS * i // shards
        out.append(bytes([0x61 + v // _LETTERS, 0x61 + v % _LETTERS]))
    return out


def initial_map(
    nodes: Sequence[int],
    shards: int,
    replicas: int = DEFAULT_REPLICAS,
    split_keys: Sequence[bytes] | None = None,
) -> ShardMap:
    ids = sorted(set(nodes))
    if not ids:
        raise ValueError("no nodes")
    if replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {replicas}")
    keys = list(split_keys) if split_keys is not None else default_split_keys(shards)
    if len(keys) != shards - 1:
        raise ValueError(f"{shards} shards need {shards - 1} split keys, got {len(keys)}")
    if any(not k for k in keys) or any(a >= b for a, b in itertools.pairwise(keys)):
        raise ValueError("split keys must be non-empty and strictly increasing")
    r = min(replicas, len(ids))
    bounds = [b"", *keys, b""]
    out = []
    for i in range(shards):
        voters = tuple(sorted(ids[(i + j) % len(ids)] for j in range(r)))
        out.append(Descriptor(id=i + 1, start=bounds[i], end=bounds[i + 1], voters=voters))
    return ShardMap(out)


def meta_voters(nodes: Sequence[int], replicas: int = DEFAULT_REPLICAS) -> tuple[int, ...]:
    ids = sorted(set(nodes))
    return tuple(ids[: min(replicas, len(ids))])
