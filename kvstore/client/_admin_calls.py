"""The operator calls of AsyncClient (status, leadership, membership, shards), mixed
into it.

Rule: each call goes through the admin RPCs (admin.proto) on the same TLS settings as
the client's data calls, and a thin entry into the module that does the work
(_members.py, _shards.py); the names and signatures here are the client's public
contract (Client in _sync.py mirrors them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc
import grpc.aio

from kvstore._pb import admin_pb2, admin_pb2_grpc
from kvstore.client._limits import to_bytes
from kvstore.client._members import member_change, status_dict, transfer_leader
from kvstore.client._shards import merge_shard, shard_list, split_shard
from kvstore.client._stream import CHANNEL_OPTIONS
from kvstore.client.errors import Unavailable
from kvstore.security.tls import open_channel

if TYPE_CHECKING:
    from kvstore.client._async import AsyncClient


class AdminCalls:
    """Mixed into AsyncClient only."""

    @property
    def _client(self) -> AsyncClient:
        return cast("AsyncClient", self)

    async def _admin_call(self, endpoint: str, method: str, request: Any, timeout: float) -> Any:
        async with open_channel(endpoint, CHANNEL_OPTIONS, self._client.tls) as ch:
            stub = admin_pb2_grpc.AdminStub(ch)
            return await getattr(stub, method)(request, timeout=timeout)

    async def status(
        self, sizes: bool = False, endpoints: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Per endpoint: reachability, node id, and per group role, term, leader, commit,
        applied (and the shard and, with ``sizes``, its keys and bytes); unreachable
        nodes have ``reachable: False`` and ``error``."""

        async def one(ep: str) -> dict[str, Any]:
            try:
                st = await self._admin_call(
                    ep,
                    "Status",
                    admin_pb2.StatusRequest(sizes=sizes),
                    min(self._client.timeout, 3.0),
                )
            except grpc.aio.AioRpcError as e:
                return {
                    "endpoint": ep,
                    "reachable": False,
                    "error": f"{e.code().name}: {e.details()}",
                }
            return status_dict(ep, st)

        eps = self._client.endpoints if endpoints is None else endpoints
        return list(await asyncio.gather(*(one(ep) for ep in eps)))

    async def transfer_leader(self, to: int, group: int = 1) -> int:
        """Move leadership of ``group`` to node ``to``; returns the new leader id."""
        return await transfer_leader(self._client, to, group)

    async def _member_change(
        self, method: str, node_id: int, endpoint: str = "", old_id: int = 0
    ) -> dict[str, Any]:
        return await member_change(self._client, method, node_id, endpoint, old_id)

    async def add_learner(self, node_id: int, endpoint: str) -> dict[str, Any]:
        """Add node ``node_id`` (started with ``serve --join``) as a learner."""
        return await self._member_change("AddLearner", node_id, endpoint)

    async def promote(self, node_id: int) -> dict[str, Any]:
        """Make learner ``node_id`` a voter."""
        return await self._member_change("PromoteLearner", node_id)

    async def remove_member(self, node_id: int) -> dict[str, Any]:
        return await self._member_change("RemoveMember", node_id)

    async def demote(self, node_id: int) -> dict[str, Any]:
        """Raft: make voter ``node_id`` a learner."""
        return await self._member_change("DemoteVoter", node_id)

    async def replace_member(self, old_id: int, new_id: int) -> dict[str, Any]:
        """Raft: learner ``new_id`` becomes a voter and voter ``old_id`` leaves, in one
        joint configuration change."""
        return await self._member_change("ReplaceMember", new_id, old_id=old_id)

    async def shards(self) -> list[dict[str, Any]]:
        """The shard map with each shard's leader and size (empty: an unsharded cluster)."""
        return await shard_list(self._client)

    async def split_shard(self, shard: int, at: bytes | str | None = None) -> dict[str, Any]:
        """Split ``shard`` at ``at`` (None: the middle of its data); returns both halves."""
        return await split_shard(self._client, shard, None if at is None else to_bytes(at))

    async def merge_shard(self, shard: int) -> dict[str, Any]:
        """Merge ``shard`` with its right neighbour online; returns the merged shard and
        the id of the one it absorbed."""
        return await merge_shard(self._client, shard)

    async def members(self) -> dict[str, Any]:
        for st in await self.status():
            for g in st.get("groups", []):
                if g["role"] == "leader":
                    return {"voters": g["voters"], "learners": g["learners"]}
        raise Unavailable("no leader found", definite=True)
