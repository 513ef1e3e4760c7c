"""Membership and leadership for operators (admin RPCs), and the status of a node.

Rule: a membership change goes to every endpoint: each node learns the new member's
address, the group's leader proposes the change and answers with the new membership;
a not-leader refusal from the others is no error.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from kvstore._pb import admin_pb2
from kvstore.client._shards import shard_dict
from kvstore.client.errors import Unavailable, from_code

if TYPE_CHECKING:
    from kvstore.client._async import AsyncClient


async def transfer_leader(c: AsyncClient, to: int, group: int) -> int:
    """Move leadership of ``group`` to node ``to``; returns the new leader id."""
    leader = None
    for st in await c.status():
        for g in st.get("groups", []):
            if g["group"] == group and g["role"] == "leader":
                leader = st["endpoint"]
    if leader is None:
        raise Unavailable("no leader found to transfer from", definite=True)
    try:
        r = await c._admin_call(
            leader,
            "TransferLeadership",
            admin_pb2.TransferLeadershipRequest(group=group, to=to),
            c.timeout,
        )
    except grpc.aio.AioRpcError as e:
        raise from_code(e.code().value[0], e.details() or "", definite=False) from e
    return int(r.leader_id)


async def member_change(
    c: AsyncClient, method: str, node_id: int, endpoint: str = "", old_id: int = 0
) -> dict[str, Any]:
    """Send the change to every node: each learns the endpoint (``endpoint`` given);
    the leader also proposes the change and answers with the new membership."""
    req = admin_pb2.MemberRequest(group=1, node_id=node_id, endpoint=endpoint, old_id=old_id)

    async def one(ep: str) -> Any:
        try:
            return await c._admin_call(ep, method, req, c.timeout)
        except grpc.aio.AioRpcError as e:
            return e

    answers = await asyncio.gather(*(one(ep) for ep in c.endpoints))
    for a in answers:
        if isinstance(a, admin_pb2.MemberResponse):
            return {"voters": list(a.voters), "learners": list(a.learners), "index": a.index}
    errors = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    not_leader = grpc.StatusCode.FAILED_PRECONDITION
    real = [e for e in errors if e.code() != not_leader] or errors
    e = real[0]
    raise from_code(e.code().value[0], e.details() or "", definite=False)


def status_dict(endpoint: str, st: admin_pb2.StatusResponse) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "reachable": True,
        "id": st.node_id,
        "listen": st.endpoint,
        "cluster_id": st.cluster_id,
        "consensus": st.consensus,
        "groups": [
            {
                "group": g.group,
                "role": g.role,
                "term": g.term,
                "leader": g.leader_id,
                "leader_endpoint": g.leader_endpoint,
                "commit": g.commit,
                "applied": g.applied,
                "last_index": g.last_index,
                "first_index": g.first_index,
                "voters": list(g.voters),
                "learners": list(g.learners),
                "shard": shard_dict(g.shard) if g.HasField("shard") else None,
                "keys": g.keys,
                "bytes": g.bytes,
                "progress": [
                    {
                        "id": p.id,
                        "match": p.match,
                        "next": p.next,
                        "state": p.state,
                        "inflight": p.inflight,
                        "learner": p.learner,
                    }
                    for p in g.progress
                ],
            }
            for g in st.groups
        ],
        "peers": [
            {
                "id": p.id,
                "endpoint": p.endpoint,
                "connected": p.connected,
                "phi": round(p.phi, 2),
                "state": p.state,
            }
            for p in st.peers
        ],
    }
