"""MetaClient: how a node reads and changes the shard map held by the meta group (0).

Rules: commands go to the meta group's leader: proposed locally when this node leads it,
otherwise sent with the admin MetaPropose RPC to the leader, found by following
not-leader hints from the meta group's members. A forwarded request carries
``kvstore-forwarded`` metadata and is never forwarded again (no loops during elections).
Map reads are linearizable: a ReadIndex on the meta group's leader before reading.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from kvstore._pb import admin_pb2, admin_pb2_grpc
from kvstore.consensus.types import Role
from kvstore.node.driver import NodeDriver
from kvstore.node.errors import DeadlineOp, UnavailableOp
from kvstore.security.tls import ChannelTLS, node_name, open_channel
from kvstore.shard import commands as cmds
from kvstore.shard import descriptor as desc
from kvstore.shard.descriptor import META_GROUP, Descriptor
from kvstore.storage import keys
from kvstore.storage.codec import unseal

FORWARDED = ("kvstore-forwarded", "1")
_NOT_LEADER = grpc.StatusCode.FAILED_PRECONDITION


class MetaClient:
    def __init__(
        self,
        driver: NodeDriver,
        endpoints: dict[int, str],
        meta_voters: Sequence[int],
        tls: ChannelTLS | None = None,
    ) -> None:
        self.driver = driver
        self.tls = tls
        self.endpoints = endpoints
        self.meta_voters = tuple(meta_voters)
        self._hint = ""
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close()

    def leads_meta(self) -> bool:
        g = self.driver.groups.get(META_GROUP)
        return g is not None and g.role == Role.LEADER

    def leader_hint(self) -> str:
        g = self.driver.groups.get(META_GROUP)
        if g is not None and g.leader:
            return self.endpoints.get(g.leader, "")
        return self._hint

    def _candidates(self) -> list[str]:
        out = [self.leader_hint()]
        out += [self.endpoints.get(n, "") for n in self.meta_voters]
        me = self.endpoints.get(self.driver.config.node_id, "")
        return [e for i, e in enumerate(out) if e and e not in out[:i] and e != me]

    def admin_stub(self, endpoint: str) -> admin_pb2_grpc.AdminStub:
        """An admin stub for another node (its channel kept for reuse)."""
        return self._stub(endpoint)

    def _stub(self, endpoint: str) -> admin_pb2_grpc.AdminStub:
        ch = self._channels.get(endpoint)
        if ch is None:
            ch = self._channels[endpoint] = self.node_channel(endpoint)
        return admin_pb2_grpc.AdminStub(ch)

    def node_channel(self, endpoint: str) -> grpc.aio.Channel:
        """A channel to another node's port: with TLS this node's certificate, and the
        other side must prove it is the node at that address (node-<id>)."""
        ids = [i for i, e in self.endpoints.items() if e == endpoint]
        name = node_name(ids[0]) if ids and self.tls is not None else None
        return open_channel(endpoint, (), self.tls, name)

    def local_map(self) -> list[Descriptor]:
        """The shard map as this node's meta replica has applied it."""
        record = self.driver.storage.get_group_meta(META_GROUP, keys.TAG_META_STATE)
        if record is None:
            return []
        state = cmds.MetaState.decode(unseal(META_GROUP, record, "meta state"))
        return list(state.shards)

    async def _call(self, method: str, request: Any, timeout: float) -> Any:
        """Call ``method`` on the meta leader, following hints until ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "no meta group member reachable"
        while loop.time() < deadline:
            for ep in self._candidates():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    return await getattr(self._stub(ep), method)(
                        request, timeout=min(remaining, 2.0), metadata=(FORWARDED,)
                    )
                except grpc.aio.AioRpcError as e:
                    last = f"{ep}: {e.code().name}: {e.details()}"
                    if e.code() == _NOT_LEADER:
                        hint = dict(e.trailing_metadata() or ()).get("kvstore-leader-endpoint")
                        if isinstance(hint, str) and hint:
                            self._hint = hint
                    if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                        raise UnavailableOp(f"meta group refused: {last}", definite=True) from e
            await asyncio.sleep(0.1)
        raise DeadlineOp(f"meta group leader not reached in time ({last})", definite=False)

    async def propose(self, cmd: cmds.AdminCommand, timeout: float = 5.0) -> int:
        """Apply ``cmd`` in the meta group; returns its result."""
        if self.leads_meta():
            return await self.driver.propose_admin(META_GROUP, cmds.encode(cmd), timeout)
        r = await self._call(
            "MetaPropose", admin_pb2.MetaProposeRequest(command=cmds.encode(cmd)), timeout
        )
        return int(r.result)

    async def shard_map(self, timeout: float = 5.0) -> list[Descriptor]:
        """The current shard map, read linearizably from the meta group's leader."""
        if self.leads_meta():
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self.driver.read_barrier(META_GROUP, "strong", 0, timeout, fut)
            await fut
            return self.local_map()
        r = await self._call("ShardMap", admin_pb2.ShardMapRequest(), timeout)
        return [from_pb(d) for d in r.shards]


def from_pb(d: Any) -> Descriptor:
    return Descriptor(
        id=d.id,
        start=d.start,
        end=d.end,
        epoch=desc.Epoch(d.version or 1, d.conf_ver or 1),
        voters=tuple(d.voters),
        learners=tuple(d.learners),
    )
