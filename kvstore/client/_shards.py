"""Shard operations for operators: list the shards, split or merge them (admin RPCs).

Rule: the map comes from the meta group (linearizable); leaders and sizes from the nodes'
status, so a listing shows what the nodes really run. A split is sent to the shard's
leader and follows not-leader hints within the client's deadline; a merge likewise to
the left shard's leader, naming the right neighbour it expects, so a retry after a lost
answer cannot merge the next shard too.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from kvstore._pb import admin_pb2, kv_pb2
from kvstore.client.errors import InvalidArgument, KVError, Unavailable, from_code

if TYPE_CHECKING:
    from kvstore.client._async import AsyncClient


def shard_dict(d: kv_pb2.ShardDescriptor) -> dict[str, Any]:
    return {
        "id": d.id,
        "start": d.start.decode(errors="backslashreplace"),
        "end": d.end.decode(errors="backslashreplace"),
        "version": d.version,
        "conf_ver": d.conf_ver,
        "voters": list(d.voters),
        "learners": list(d.learners),
    }


async def shard_list(c: AsyncClient) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    await c._router.fetch(loop.time() + c.timeout)
    # Every node the map knows, not only the endpoints given: leaders live anywhere.
    every = sorted({*c.endpoints, *c._router.cache.nodes.values()})
    nodes = await c.status(sizes=True, endpoints=every)
    out = []
    for d in c._router.cache.map:
        leader, keys, size = 0, 0, 0
        for n in nodes:
            for g in n.get("groups", []):
                if g["group"] == d.id and g["role"] == "leader":
                    leader, keys, size = n["id"], g["keys"], g["bytes"]
        row = _descriptor_dict(d)
        row.update(leader=leader, keys=keys, bytes=size)
        out.append(row)
    return out


async def require_shard(c: AsyncClient, shard: int) -> None:
    """Raise InvalidArgument naming the shards there are when ``shard`` is not one of
    them (the map is read from the meta group). The meta group (0) of a sharded cluster
    and the one group (1) of an unsharded one pass: their own refusals are more precise."""
    loop = asyncio.get_running_loop()
    await c._router.fetch(loop.time() + c.timeout)
    ids = sorted(d.id for d in c._router.cache.map)
    if shard in ids or shard == (0 if ids else 1):
        return
    raise InvalidArgument(
        f"shard {shard} does not exist (shards: {ids or 'none: unsharded'})", definite=True
    )


async def split_shard(c: AsyncClient, shard: int, at: bytes | None) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(c.timeout, 10.0)
    await require_shard(c, shard)
    req = admin_pb2.SplitShardRequest(shard=shard)
    if at is not None:
        req.at = at
    r = await _leader_call(c, shard, "SplitShard", req, deadline)
    return {"left": shard_dict(r.left), "right": shard_dict(r.right)}


async def merge_shard(c: AsyncClient, shard: int) -> dict[str, Any]:
    """Merge ``shard`` with its right neighbour (docs/sharding.md, "Merge")."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(c.timeout, 30.0)
    await require_shard(c, shard)
    by_id = {d.id: d for d in c._router.cache.map}
    left = by_id.get(shard)
    if left is None:
        raise InvalidArgument(f"shard {shard} cannot be merged (the meta group)", definite=True)
    if not left.end:
        raise InvalidArgument(
            f"shard {shard} is the last shard: it has no right neighbour to merge with",
            definite=True,
        )
    right = next((d for d in by_id.values() if d.start == left.end), None)
    req = admin_pb2.MergeShardRequest(shard=shard, source=right.id if right else 0)
    try:
        r = await _leader_call(c, shard, "MergeShard", req, deadline)
    except KVError:
        if right is None or not await _merged(c, shard, right.id, deadline):
            raise
        # An attempt whose answer was lost did merge (a retry then finds another
        # neighbour and is refused): report the merge.
        d = next(d for d in c._router.cache.map if d.id == shard)
        return {"merged": _descriptor_dict(d), "source": right.id}
    return {"merged": shard_dict(r.merged), "source": r.source}


async def _merged(c: AsyncClient, shard: int, source: int, deadline: float) -> bool:
    """Does the map show ``shard`` having absorbed ``source``?"""
    loop = asyncio.get_running_loop()
    try:
        await c._router.fetch(min(deadline, loop.time() + c.timeout))
    except KVError:
        return False
    ids = {d.id: d for d in c._router.cache.map}
    return source not in ids and shard in ids


def _descriptor_dict(d: Any) -> dict[str, Any]:
    return shard_dict(
        kv_pb2.ShardDescriptor(
            id=d.id,
            start=d.start,
            end=d.end,
            version=d.epoch.version,
            conf_ver=d.epoch.conf_ver,
            voters=d.voters,
            learners=d.learners,
        )
    )


async def _leader_call(c: AsyncClient, shard: int, method: str, req: Any, deadline: float) -> Any:
    """Call admin ``method`` on ``shard``'s leader, following not-leader hints and
    retrying unreachable nodes until ``deadline``."""
    loop = asyncio.get_running_loop()
    await c._router.fetch(loop.time() + c.timeout)
    every = sorted({*c.endpoints, *c._router.cache.nodes.values()})
    candidates: list[str] = []
    for n in await c.status(endpoints=every):
        for g in n.get("groups", []):
            if g["group"] == shard and g["role"] == "leader":
                candidates.insert(0, n["endpoint"])
            elif g["group"] == shard:
                candidates.append(n["endpoint"])
    if not candidates:
        raise Unavailable(f"no node hosts shard {shard}", definite=True)
    last: KVError | None = None
    turn = 0
    while loop.time() < deadline:
        ep = candidates[turn % len(candidates)]
        try:
            return await c._admin_call(ep, method, req, deadline - loop.time())
        except grpc.aio.AioRpcError as e:
            md = dict(e.trailing_metadata() or ())
            hint = md.get("kvstore-leader-endpoint")
            last = from_code(e.code().value[0], e.details() or "", definite=True)
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                if isinstance(hint, str) and hint:
                    candidates.insert(0, hint)
                    turn = 0
                else:
                    turn += 1
                await asyncio.sleep(0.1)
                continue
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                turn += 1
                await asyncio.sleep(0.2)
                continue
            raise last from e
    raise last or Unavailable(f"{method} did not complete in time", definite=False)
