"""Client side of history: Compact on every shard.

Rule: compaction is idempotent (a shard's compacted revision only rises), so a compact
is retried like a read; on a sharded cluster each shard is compacted in its own log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvstore._pb import kv_pb2
from kvstore.client._routing import Route, ShardCache
from kvstore.client.errors import InvalidArgument
from kvstore.shard.descriptor import Descriptor

if TYPE_CHECKING:
    from kvstore.client._async import AsyncClient


def route_shard(shard: int) -> Route:
    def route(op: kv_pb2.Op, cache: ShardCache) -> Descriptor | None:
        return cache.map.get(shard)

    return route


async def compact_history(client: AsyncClient, revision: int) -> dict[int, int]:
    if revision < 1:
        raise InvalidArgument(f"compact revision must be >= 1, got {revision}")
    op = kv_pb2.Op(compact=kv_pb2.CompactRequest(revision=revision))
    from kvstore.client._async import _ShardedCluster

    if not await client._sharded():
        try:
            r = await client._execute_unrouted(op, write=False, anywhere=False)
        except _ShardedCluster:
            client._router.detected = True
            return await compact_history(client, revision)
        return {r.compact.header.group or 1: r.compact.compact_revision}
    out: dict[int, int] = {}
    for d in list(client._router.cache.map):
        one = kv_pb2.Op(compact=kv_pb2.CompactRequest(revision=revision))
        r = await client._router.execute(one, write=False, anywhere=False, route=route_shard(d.id))
        out[d.id] = r.compact.compact_revision
    return out
