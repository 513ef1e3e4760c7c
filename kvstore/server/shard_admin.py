"""The sharding half of the admin service (thin): shard map, split, meta proposals.

Rule: every change goes through a group's log (docs/sharding.md): SplitShard runs on the
shard's leader, reserves an id in the meta group, proposes Split in the shard's own log and
reports the halves; bad input is INVALID_ARGUMENT naming why, and nothing changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kvstore._pb import admin_pb2
from kvstore.consensus.types import Role
from kvstore.node.driver import NodeDriver
from kvstore.node.errors import InvalidOp, NotLeaderOp, OpError, UnavailableOp
from kvstore.node.merge_coordinator import MergeCoordinator
from kvstore.node.meta import FORWARDED, MetaClient
from kvstore.node.reporter import Reporter
from kvstore.node.routing import LocalRouter
from kvstore.node.shards import add_empty_replica
from kvstore.server.convert import shard_pb
from kvstore.shard import commands as cmds
from kvstore.shard.descriptor import META_GROUP, Descriptor
from kvstore.shard.split import SplitError, check_split_key, split
from kvstore.storage import NodeStorage

MEDIAN_SCAN_KEYS = 1_000_000
"""The default split key is the median of at most this many keys of the shard."""


def shard_size(storage: NodeStorage, group: int, cap: int = MEDIAN_SCAN_KEYS) -> tuple[int, int]:
    """(keys, bytes of keys and values) in the group's range, counting up to ``cap`` keys."""
    n = size = 0
    for kv in storage.kv(group).scan(b"", b"", cap):
        n += 1
        size += len(kv.key) + len(kv.value)
    return n, size


def median_key(storage: NodeStorage, group: int, d: Descriptor) -> bytes:
    keys = [kv.key for kv in storage.kv(group).scan(b"", b"", MEDIAN_SCAN_KEYS)]
    # The first key is the range's own start when present; it can never be a split key.
    keys = [k for k in keys if k > d.start]
    if len(keys) < 2:
        raise InvalidOp(
            f"shard {d.id} holds too few keys to pick a middle; give --at KEY", definite=True
        )
    return keys[len(keys) // 2]


def forwarded(context: Any) -> bool:
    md = context.invocation_metadata() or ()
    return any((m.key, m.value) == FORWARDED for m in md)


class ShardAdmin:
    """Mixed into AdminService; needs driver, router, meta, reporter, endpoints."""

    driver: NodeDriver
    router: LocalRouter | None
    meta: MetaClient | None
    reporter: Reporter | None
    _merger: MergeCoordinator | None

    async def _abort(self, context: Any, e: OpError) -> None:
        raise NotImplementedError

    def _not_meta_leader(self) -> NotLeaderOp:
        assert self.meta is not None
        hint = self.meta.leader_hint()
        return NotLeaderOp("not the meta group's leader", definite=True, leader_endpoint=hint)

    async def ShardMap(
        self, request: admin_pb2.ShardMapRequest, context: Any
    ) -> admin_pb2.ShardMapResponse:
        nodes = dict(self.driver.endpoints)
        if self.meta is None:
            return admin_pb2.ShardMapResponse(nodes=nodes)
        remaining = context.time_remaining() or 5.0
        try:
            if not self.meta.leads_meta() and forwarded(context):
                raise self._not_meta_leader()
            shards = await self.meta.shard_map(remaining)
        except OpError as e:
            await self._abort(context, e)
            raise AssertionError("unreachable") from e
        return admin_pb2.ShardMapResponse(shards=[shard_pb(d) for d in shards], nodes=nodes)

    async def MetaPropose(
        self, request: admin_pb2.MetaProposeRequest, context: Any
    ) -> admin_pb2.MetaProposeResponse:
        try:
            if self.meta is None or not self.meta.leads_meta():
                raise (
                    self._not_meta_leader()
                    if self.meta
                    else UnavailableOp("this node is not sharded", definite=True)
                )
            try:
                cmd = cmds.decode(request.command)
            except ValueError as e:
                raise InvalidOp(f"not a meta command: {e}", definite=True) from e
            if isinstance(cmd, (cmds.Split, *cmds.MERGE_COMMANDS)):
                raise InvalidOp(
                    f"{type(cmd).__name__} belongs in a data shard's log", definite=True
                )
            result = await self.driver.propose_admin(
                META_GROUP, request.command, context.time_remaining() or 5.0
            )
        except OpError as e:
            await self._abort(context, e)
            raise AssertionError("unreachable") from e
        return admin_pb2.MetaProposeResponse(result=result)

    async def AddReplica(
        self, request: admin_pb2.AddReplicaRequest, context: Any
    ) -> admin_pb2.AddReplicaResponse:
        if self.meta is None:
            await self._abort(
                context, InvalidOp("the node is not sharded (start with --shards)", definite=True)
            )
        if request.shard < 1:
            await self._abort(context, InvalidOp("shard id must be >= 1", definite=True))
        return admin_pb2.AddReplicaResponse(created=add_empty_replica(self.driver, request.shard))

    async def SplitShard(
        self, request: admin_pb2.SplitShardRequest, context: Any
    ) -> admin_pb2.SplitShardResponse:
        try:
            left, right = await self._split(request, context.time_remaining() or 10.0)
        except OpError as e:
            await self._abort(context, e)
            raise AssertionError("unreachable") from e
        return admin_pb2.SplitShardResponse(left=shard_pb(left), right=shard_pb(right))

    async def MergeShard(
        self, request: admin_pb2.MergeShardRequest, context: Any
    ) -> admin_pb2.MergeShardResponse:
        try:
            if self.meta is None or self.router is None:
                raise InvalidOp(
                    "the cluster is not sharded (start it with --shards)", definite=True
                )
            merger = self._merger
            if merger is None:  # an admin service built without one (tests)
                merger = self._merger = MergeCoordinator(
                    self.driver, self.router, self.meta, self.reporter
                )
            merged, source = await merger.merge(
                request.shard, request.source, context.time_remaining() or 30.0
            )
        except OpError as e:
            await self._abort(context, e)
            raise AssertionError("unreachable") from e
        return admin_pb2.MergeShardResponse(merged=shard_pb(merged), source=source)

    async def _split(
        self, request: admin_pb2.SplitShardRequest, timeout: float
    ) -> tuple[Descriptor, Descriptor]:
        if self.meta is None or self.router is None:
            raise InvalidOp("the cluster is not sharded (start it with --shards)", definite=True)
        at = request.at if request.HasField("at") else None
        return await split_shard(
            self.driver, self.router, self.meta, self.reporter, request.shard, at, timeout
        )


async def split_shard(
    driver: NodeDriver,
    router: LocalRouter,
    meta: MetaClient,
    reporter: Reporter | None,
    shard: int,
    at: bytes | None,
    timeout: float,
) -> tuple[Descriptor, Descriptor]:
    """Split ``shard`` (led here) at ``at`` (None: the middle of its data): reserve an id
    in the meta group, propose Split in the shard's log, report the halves. Raises
    OpError (InvalidOp for bad input: nothing changed). Used by the admin RPC and by
    the automatic splitter."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    g = driver.groups.get(shard)
    d = router.get(shard)
    if g is None or d is None:
        raise UnavailableOp(f"shard {shard} has no replica here", definite=True)
    if g.role != Role.LEADER:
        raise driver.not_leader(g)
    if at is not None:
        try:
            check_split_key(d, at)
        except SplitError as e:
            raise InvalidOp(str(e), definite=True) from e
    else:
        at = median_key(driver.storage, shard, d)
    new_id = await meta.propose(cmds.AllocIds(1), max(deadline - loop.time(), 0.1))
    data = cmds.encode(cmds.Split(new_id, at, d.epoch))
    got = await driver.propose_admin(shard, data, max(deadline - loop.time(), 0.1))
    if got != new_id:
        raise UnavailableOp(
            f"shard {d.id} changed while splitting (no longer {d.describe()}); retry",
            definite=True,
        )
    left, right = split(d, at, new_id)
    if reporter is not None:
        try:
            await reporter.report_now(max(deadline - loop.time(), 0.1))
        except OpError:
            reporter.poke()  # the split stands; the map catches up in the background
    return left, right
