"""Node operations for operators: list the nodes, decommission one (admin RPCs).

Rule: both are answered by the meta group's leader (it runs placement); the call tries
the given endpoints and every node the shard map knows, and follows not-leader hints,
within the deadline. A refusal (INVALID_ARGUMENT) is raised at once with its reason.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from kvstore._pb import admin_pb2
from kvstore.client._shards import require_shard
from kvstore.client.errors import KVError, Unavailable, from_code

if TYPE_CHECKING:
    from kvstore.client._async import AsyncClient


async def _meta_call(
    c: AsyncClient, method: str, request: Any, timeout: float, attempt: float = 5.0
) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        await c._router.fetch(deadline)
        known = list(c._router.cache.nodes.values())
    except KVError:
        known = []
    candidates = list(dict.fromkeys([*c.endpoints, *sorted(known)]))
    last: KVError | None = None
    turn = 0
    while loop.time() < deadline:
        ep = candidates[turn % len(candidates)]
        try:
            return await c._admin_call(ep, method, request, min(deadline - loop.time(), attempt))
        except grpc.aio.AioRpcError as e:
            last = from_code(e.code().value[0], e.details() or "", definite=True)
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                hint = dict(e.trailing_metadata() or ()).get("kvstore-leader-endpoint")
                if isinstance(hint, str) and hint and hint != ep:
                    candidates.insert(0, hint)
                    turn = 0
                    continue
            elif e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise last from e
            turn += 1
            await asyncio.sleep(0.1)
    raise last or Unavailable(f"{method}: the meta group's leader was not reached", definite=False)


def node_dict(n: admin_pb2.NodeInfo) -> dict[str, Any]:
    return {
        "id": n.id,
        "endpoint": n.endpoint,
        "liveness": n.liveness,
        "phi": round(n.phi, 2),
        "down_for": round(n.down_for, 1),
        "draining": n.draining,
        "replicas": n.replicas,
        "leaders": n.leaders,
        "disk_used_bytes": n.disk_used_bytes,
        "disk_capacity_bytes": n.disk_capacity_bytes,
    }


async def node_list(c: AsyncClient) -> list[dict[str, Any]]:
    r = await _meta_call(c, "NodeList", admin_pb2.NodeListRequest(), c.timeout)
    return [node_dict(n) for n in r.nodes]


async def decommission(c: AsyncClient, node: int, timeout: float) -> int:
    """Drain ``node`` and wait until it holds no replica (or ``timeout``); returns the
    replicas it still holds (0: done)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    req = admin_pb2.DecommissionRequest(node_id=node)
    while True:
        # Asked again every round: a new meta leader learns the drain from the next call.
        r = await _meta_call(c, "Decommission", req, max(min(c.timeout, deadline - loop.time()), 1))
        if r.replicas_left == 0 or loop.time() >= deadline:
            return int(r.replicas_left)
        await asyncio.sleep(1.0)


async def move_shard(c: AsyncClient, shard: int, frm: int, to: int, timeout: float) -> Any:
    """Move ``shard``'s replica from node ``frm`` to node ``to``; returns the members."""
    await require_shard(c, shard)
    req = admin_pb2.MoveShardRequest(shard=shard, from_node=frm, to_node=to)
    r = await _meta_call(c, "MoveShard", req, timeout, attempt=timeout)
    return {"voters": list(r.voters), "learners": list(r.learners)}


async def transfer_shard_leader(c: AsyncClient, shard: int, to: int) -> int:
    """Move the leadership of ``shard`` to node ``to`` (a voter); returns the leader."""
    await require_shard(c, shard)
    every = sorted({*c.endpoints, *c._router.cache.nodes.values()})
    for st in await c.status(endpoints=every):
        for g in st.get("groups", []):
            if g["group"] == shard and g["role"] == "leader":
                try:
                    r = await c._admin_call(
                        st["endpoint"],
                        "TransferLeadership",
                        admin_pb2.TransferLeadershipRequest(group=shard, to=to),
                        c.timeout,
                    )
                except grpc.aio.AioRpcError as e:
                    raise from_code(e.code().value[0], e.details() or "", definite=False) from e
                return int(r.leader_id)
    raise Unavailable(f"no leader of shard {shard} found", definite=True)
