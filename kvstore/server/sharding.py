"""Sharded bootstrap and the node's sharding identity (process assembly helpers).

Rule: a sharded node records ``sharded`` and the meta group's voters in its node metadata
on first start, and every node computes the same initial map from the same flags
(kvstore.shard.layout), so no coordination is needed to bootstrap. On a restart the
stored record wins over the flags: a data directory never changes its layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvstore.node import log
from kvstore.shard import commands as cmds
from kvstore.shard.descriptor import META_GROUP
from kvstore.shard.layout import initial_map, meta_voters
from kvstore.storage import NodeStorage

INITIAL_INDEX = 5
"""Sharded groups start their logs here, so a new replica always gets a snapshot."""
SHARDED = b"sharded"
META_VOTERS = b"meta_voters"


@dataclass(frozen=True, slots=True)
class Sharding:
    sharded: bool
    meta_voters: tuple[int, ...] = ()


def load(storage: NodeStorage) -> Sharding:
    if storage.get_meta(SHARDED) != b"1":
        return Sharding(False)
    raw = (storage.get_meta(META_VOTERS) or b"").decode()
    return Sharding(True, tuple(int(x) for x in raw.split(",") if x))


def bootstrap(
    storage: NodeStorage,
    node_id: int,
    nodes: Sequence[int],
    shards: int,
    replicas: int,
    split_keys: Sequence[bytes] | None,
) -> Sharding:
    """Create this node's replicas of the initial map (a brand-new data directory)."""
    shard_map = initial_map(nodes, shards, replicas, split_keys)
    meta = meta_voters(nodes, replicas)
    if node_id in meta:
        state = cmds.initial_meta(shard_map).encode()
        storage.group(META_GROUP).bootstrap(
            set(meta), meta_state=state, initial_index=INITIAL_INDEX
        )
    hosted = []
    for d in shard_map:
        if node_id in d.voters:
            storage.group(d.id).bootstrap(set(d.voters), shard=d, initial_index=INITIAL_INDEX)
            hosted.append(d.id)
    with storage.write() as w:
        w.set_meta(SHARDED, b"1")
        w.set_meta(META_VOTERS, ",".join(map(str, meta)).encode())
    log.event("sharded_bootstrap", shards=shards, hosted=hosted, meta=list(meta))
    return Sharding(True, meta)


def hosted_groups(storage: NodeStorage) -> tuple[int, ...]:
    """Every group with durable state on this node (a sharded node's groups)."""
    return tuple(storage.groups())
