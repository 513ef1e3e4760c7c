"""The admin service (thin): status, leadership transfer, membership changes."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from kvstore._pb import admin_pb2, admin_pb2_grpc
from kvstore.backup.service import BackupAdmin
from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    ConsensusError,
    Role,
)
from kvstore.node.driver import NodeDriver
from kvstore.node.errors import InvalidOp, OpError, UnavailableOp
from kvstore.node.members import with_address
from kvstore.node.merge_coordinator import MergeCoordinator
from kvstore.node.meta import MetaClient
from kvstore.node.placement_loop import PlacementLoop
from kvstore.node.reporter import Reporter
from kvstore.node.routing import LocalRouter
from kvstore.node.transport import PeerTransport
from kvstore.server import convert
from kvstore.server.convert import shard_pb
from kvstore.server.node_admin import NodeAdmin
from kvstore.server.shard_admin import ShardAdmin, shard_size


def check_change(
    kind: ConfChangeType, node_id: int, endpoint: str, cs: ConfState, *, known: bool
) -> None:
    """Refuse membership changes that would silently weaken the cluster (a promoted node
    that never caught up, a voter with no address) with INVALID_ARGUMENT."""
    if node_id < 1:
        raise InvalidOp(f"node id must be >= 1, got {node_id}", definite=True)
    if endpoint:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidOp(f"endpoint must be HOST:PORT, got {endpoint!r}", definite=True)
    if kind == ConfChangeType.ADD_LEARNER:
        if node_id in cs.voters:
            raise InvalidOp(f"node {node_id} is already a voter", definite=True)
        if not endpoint and not known:
            raise InvalidOp(f"node {node_id} is new: give its HOST:PORT", definite=True)
    elif kind == ConfChangeType.ADD_NODE:
        if node_id not in cs.learners and node_id not in cs.voters:
            raise InvalidOp(
                f"node {node_id} is not a learner: add it with add-learner and let it "
                "catch up before promoting it",
                definite=True,
            )
    elif node_id not in cs.voters and node_id not in cs.learners:
        raise InvalidOp(f"node {node_id} is not a member", definite=True)


async def abort(context: Any, e: OpError) -> None:
    await convert.abort(context, convert.error_pb(e))


class AdminService(BackupAdmin, ShardAdmin, NodeAdmin, admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        *,
        driver: NodeDriver,
        transport: PeerTransport,
        node_id: int,
        endpoint: str,
        cluster_id: str,
        consensus: str,
        router: LocalRouter | None = None,
        meta: MetaClient | None = None,
        reporter: Reporter | None = None,
        placement: PlacementLoop | None = None,
        merger: MergeCoordinator | None = None,
    ) -> None:
        self.placement = placement
        self._merger = merger
        self.router = router
        self.meta = meta
        self.reporter = reporter
        self.driver = driver
        self.transport = transport
        self.node_id = node_id
        self.endpoint = endpoint
        self.cluster_id = cluster_id
        self.consensus = consensus

    async def _abort(self, context: Any, e: OpError) -> None:
        await abort(context, e)

    def status(self, sizes: bool = False) -> admin_pb2.StatusResponse:
        groups = []
        for gid, g in sorted(self.driver.groups.items()):
            st = self.driver.status(gid, progress=True)
            shard = self.driver.storage.group(gid).view.shard
            n_keys, n_bytes = shard_size(self.driver.storage, gid) if sizes and shard else (0, 0)
            groups.append(
                admin_pb2.GroupStatus(
                    shard=shard_pb(shard) if shard is not None else None,
                    keys=n_keys,
                    bytes=n_bytes,
                    group=gid,
                    role=st.role.name.lower(),
                    term=st.term,
                    leader_id=st.leader,
                    leader_endpoint=self.driver.endpoints.get(st.leader, ""),
                    commit=st.commit,
                    applied=g.applied,
                    last_index=st.last_index,
                    first_index=g.compacted + 1,
                    voters=sorted(st.conf_state.voters),
                    learners=sorted(st.conf_state.learners),
                    merging_with=self._merger.merging_with(gid) if self._merger else 0,
                    progress=[
                        admin_pb2.MemberProgress(
                            id=p.id,
                            match=p.match,
                            next=p.next,
                            state=p.state,
                            inflight=p.inflight,
                            learner=p.learner,
                        )
                        for p in st.progress
                    ],
                )
            )
        peers = [
            admin_pb2.PeerStatus(
                id=p.id,
                endpoint=p.endpoint,
                connected=p.connected,
                phi=min(p.phi, 1e9),
                state=p.state,
            )
            for p in self.transport.peer_status()
        ]
        used, cap = self.driver.storage.usage()
        return admin_pb2.StatusResponse(
            disk_used_bytes=used,
            disk_capacity_bytes=cap,
            node_id=self.node_id,
            endpoint=self.endpoint,
            cluster_id=self.cluster_id,
            consensus=self.consensus,
            groups=groups,
            peers=peers,
        )

    async def Status(
        self, request: admin_pb2.StatusRequest, context: Any
    ) -> admin_pb2.StatusResponse:
        return self.status(request.sizes)

    async def TransferLeadership(
        self, request: admin_pb2.TransferLeadershipRequest, context: Any
    ) -> admin_pb2.TransferLeadershipResponse:
        group = request.group if request.HasField("group") else 1
        try:
            if request.to not in self.driver.status(group).conf_state.voters:
                raise InvalidOp(f"node {request.to} is not a voter of group {group}", definite=True)
            self._check_alive(request.to, "leadership stays")
            self.driver.transfer_leadership(group, request.to)
        except ConsensusError as e:
            await abort(context, InvalidOp(str(e), definite=True))
        except OpError as e:
            await abort(context, e)
        remaining = context.time_remaining()
        deadline = asyncio.get_running_loop().time() + (remaining if remaining else 5.0)
        # Leadership moves within an election timeout or not at all; poll the driver's view.
        while asyncio.get_running_loop().time() < deadline:
            g = self.driver.groups[group]
            if g.leader == request.to:
                return admin_pb2.TransferLeadershipResponse(leader_id=g.leader)
            await asyncio.sleep(0.02)
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"leadership did not move to {request.to} in time",
        )
        raise AssertionError("unreachable")

    def _check_alive(self, node: int, outcome: str) -> None:
        """InvalidOp naming the failure detector's verdict when ``node`` is judged down
        (suspect or dead): handing it leadership would stall the group until the
        transfer times out. A peer not heard from yet ("unknown") is given the benefit."""
        if node == self.node_id:
            return
        peer = next((p for p in self.transport.peer_status() if p.id == node), None)
        if peer is not None and peer.state in ("suspect", "dead"):
            raise InvalidOp(
                f"node {node} is not alive ({peer.state}, phi {min(peer.phi, 1e9):.1f}): {outcome}",
                definite=True,
            )

    async def _change(
        self,
        request: admin_pb2.MemberRequest,
        kind: ConfChangeType,
        context: Any,
        *,
        demote: bool = False,
    ) -> admin_pb2.MemberResponse:
        group = request.group if request.HasField("group") else 1
        try:
            if kind == ConfChangeType.JOINT:
                change = self._replacement(group, request)
            elif demote:
                change = self._demotion(group, request)
            else:
                change = self._validated(group, kind, request)
        except OpError as e:
            await abort(context, e)
            raise AssertionError("unreachable") from e
        remaining = context.time_remaining()
        try:
            index = await self.driver.propose_conf_change(group, change, remaining or 10.0)
        except OpError as e:
            await abort(context, e)
            raise AssertionError("unreachable") from e
        cs = self.driver.status(group).conf_state
        return admin_pb2.MemberResponse(
            voters=sorted(cs.voters), learners=sorted(cs.learners), index=index
        )

    def _validated(
        self, group: int, kind: ConfChangeType, request: admin_pb2.MemberRequest
    ) -> ConfChange:
        """The change to propose, or an OpError; changes nothing either way (a refused
        call must leave the node as it was: issue 11 point 8). The new member's address
        travels in the change and takes effect on every replica when it applies."""
        g = self.driver.groups.get(group)
        if g is None:
            raise UnavailableOp(f"group {group} is not hosted here", definite=True)
        if g.role != Role.LEADER:
            raise self.driver.not_leader(g)
        known = self.driver.endpoints.get(request.node_id, "")
        check_change(
            kind,
            request.node_id,
            request.endpoint,
            self.driver.status(group).conf_state,
            known=bool(known),
        )
        if kind != ConfChangeType.ADD_LEARNER and request.endpoint not in ("", known):
            raise InvalidOp(
                f"node {request.node_id}'s address is set when it is added as a learner; "
                "promote and remove take no endpoint",
                definite=True,
            )
        address = "" if kind == ConfChangeType.REMOVE_NODE else request.endpoint or known
        return with_address(ConfChange(type=kind, node_id=request.node_id), address)

    def _replacement(self, group: int, request: admin_pb2.MemberRequest) -> ConfChange:
        """ReplaceMember: learner ``node_id`` becomes a voter and voter ``old_id`` leaves,
        in ONE joint configuration change (Raft only)."""
        if self.consensus != "raft":
            raise InvalidOp(
                "member replace needs joint consensus, which only --consensus raft has; "
                f"with {self.consensus}: promote the new node, then remove the old one",
                definite=True,
            )
        new, old = request.node_id, request.old_id
        if new == old:
            raise InvalidOp(f"node {new} cannot replace itself", definite=True)
        promote = self._validated(group, ConfChangeType.ADD_NODE, request)
        if old not in self.driver.status(group).conf_state.voters:
            raise InvalidOp(f"node {old} is not a voter", definite=True)
        remove = ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=old)
        return ConfChange(type=ConfChangeType.JOINT, changes=(promote, remove))

    def _demotion(self, group: int, request: admin_pb2.MemberRequest) -> ConfChange:
        """DemoteVoter: voter ``node_id`` becomes a learner (Raft only; one voter less,
        so one server at a time is safe)."""
        if self.consensus != "raft":
            raise InvalidOp(
                f"member demote needs --consensus raft; with {self.consensus}: remove the "
                "node, then add it back as a learner",
                definite=True,
            )
        g = self.driver.groups.get(group)
        if g is None:
            raise UnavailableOp(f"group {group} is not hosted here", definite=True)
        if g.role != Role.LEADER:
            raise self.driver.not_leader(g)
        if request.node_id not in self.driver.status(group).conf_state.voters:
            raise InvalidOp(f"node {request.node_id} is not a voter", definite=True)
        known = self.driver.endpoints.get(request.node_id, "")
        change = ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=request.node_id)
        return with_address(change, known)

    async def DemoteVoter(
        self, request: admin_pb2.MemberRequest, context: Any
    ) -> admin_pb2.MemberResponse:
        return await self._change(request, ConfChangeType.ADD_LEARNER, context, demote=True)

    async def ReplaceMember(
        self, request: admin_pb2.MemberRequest, context: Any
    ) -> admin_pb2.MemberResponse:
        return await self._change(request, ConfChangeType.JOINT, context)

    async def AddLearner(
        self, request: admin_pb2.MemberRequest, context: Any
    ) -> admin_pb2.MemberResponse:
        return await self._change(request, ConfChangeType.ADD_LEARNER, context)

    async def PromoteLearner(
        self, request: admin_pb2.MemberRequest, context: Any
    ) -> admin_pb2.MemberResponse:
        return await self._change(request, ConfChangeType.ADD_NODE, context)

    async def RemoveMember(
        self, request: admin_pb2.MemberRequest, context: Any
    ) -> admin_pb2.MemberResponse:
        return await self._change(request, ConfChangeType.REMOVE_NODE, context)
