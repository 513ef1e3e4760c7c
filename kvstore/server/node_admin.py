"""The placement half of the admin service (thin): node list and decommission.

Rule: both are answered by the meta group's leader, whose placement loop holds the
liveness timers and the draining set (kvstore/node/placement_loop.py); any other node
answers FAILED_PRECONDITION with the leader's address. A refused decommission is
INVALID_ARGUMENT naming each shard it would leave short, and changes nothing.
"""

from __future__ import annotations

from typing import Any

from kvstore._pb import admin_pb2
from kvstore.node.errors import InvalidOp, NotLeaderOp, OpError
from kvstore.node.meta import MetaClient
from kvstore.node.placement_loop import PlacementLoop, counts


class NodeAdmin:
    """Mixed into AdminService; needs meta and placement."""

    meta: MetaClient | None
    placement: PlacementLoop | None

    async def _abort(self, context: Any, e: OpError) -> None:
        raise NotImplementedError

    def _placement(self) -> PlacementLoop:
        if self.meta is None or self.placement is None:
            raise InvalidOp("the cluster is not sharded (start it with --shards)", definite=True)
        if not self.meta.leads_meta():
            raise NotLeaderOp(
                "not the meta group's leader (it runs placement)",
                definite=True,
                leader_endpoint=self.meta.leader_hint(),
            )
        return self.placement

    async def NodeList(
        self, request: admin_pb2.NodeListRequest, context: Any
    ) -> admin_pb2.NodeListResponse:
        try:
            p = self._placement()
        except OpError as e:
            await self._abort(context, e)
            raise AssertionError("unreachable") from e
        obs = await p.observe()
        reps, leads = counts(obs.groups)
        return admin_pb2.NodeListResponse(
            down_after=p.down_after,
            nodes=[
                admin_pb2.NodeInfo(
                    id=n.id,
                    endpoint=obs.endpoints.get(n.id, ""),
                    liveness=n.liveness,
                    phi=n.phi,
                    down_for=n.down_for,
                    draining=n.draining,
                    replicas=reps.get(n.id, 0),
                    leaders=leads.get(n.id, 0),
                    disk_used_bytes=n.disk_used,
                    disk_capacity_bytes=n.disk_cap,
                )
                for n in obs.nodes
            ],
        )

    async def Decommission(
        self, request: admin_pb2.DecommissionRequest, context: Any
    ) -> admin_pb2.DecommissionResponse:
        try:
            p = self._placement()
            left, why = await p.decommission(request.node_id)
            if why:
                raise InvalidOp(
                    f"cannot decommission node {request.node_id}: " + "; ".join(why),
                    definite=True,
                )
        except OpError as e:
            await self._abort(context, e)
            raise AssertionError("unreachable") from e
        return admin_pb2.DecommissionResponse(replicas_left=left)

    async def MoveShard(
        self, request: admin_pb2.MoveShardRequest, context: Any
    ) -> admin_pb2.MoveShardResponse:
        try:
            p = self._placement()
            g = await p.move(
                request.shard,
                request.from_node,
                request.to_node,
                context.time_remaining() or 60.0,
            )
        except OpError as e:
            await self._abort(context, e)
            raise AssertionError("unreachable") from e
        return admin_pb2.MoveShardResponse(voters=g.voters, learners=g.learners)
