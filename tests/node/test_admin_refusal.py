"""A membership call refused by a follower changes nothing there (issue 11 point 8: two
PromoteLearner calls refused by followers still re-pointed their links to the leader, and
the leader lost its quorum)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
import pytest

from kvstore._pb import admin_pb2, admin_pb2_grpc
from kvstore.client import AsyncClient

from .inprocess import free_endpoint, start_nodes, stop_nodes
from .inprocess import leader as leader_of

pytestmark = pytest.mark.timeout(60)


def test_refused_promote_on_followers_changes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        peers, nodes = await start_nodes(tmp_path)
        try:
            leader = await leader_of(nodes)
            lid = leader.opts.id
            followers = [n for n in nodes if n is not leader]
            bogus = free_endpoint()
            for f in followers:
                async with grpc.aio.insecure_channel(peers[f.opts.id]) as ch:
                    stub = admin_pb2_grpc.AdminStub(ch)
                    req = admin_pb2.MemberRequest(group=1, node_id=lid, endpoint=bogus)
                    with pytest.raises(grpc.aio.AioRpcError) as e:
                        await stub.PromoteLearner(req, timeout=5)
                    assert "not the leader" in (e.value.details() or "")
                    req = admin_pb2.MemberRequest(group=1, node_id=7, endpoint=bogus)
                    with pytest.raises(grpc.aio.AioRpcError):
                        await stub.AddLearner(req, timeout=5)
            for f in followers:
                assert f.driver.endpoints == peers
                assert {p.id: p.endpoint for p in f.transport.peer_status()} == {
                    i: ep for i, ep in peers.items() if i != f.opts.id
                }
            # The leader keeps its quorum: followers still answer it.
            await asyncio.sleep(1.0)
            async with AsyncClient([peers[lid]], timeout=5) as c:
                await c.put("after", "refusals")
                assert await c.get("after") == b"refusals"
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_a_call_naming_group_0_never_acts_on_group_1(tmp_path: Path) -> None:
    """Group 0 (the meta group) is a real group id: a transfer or membership call that
    names it must act on group 0 or be refused, never fall back to group 1 (a proto3 0
    used to read as "unset", so a meta-group transfer moved shard 1's leader instead)."""

    async def main() -> None:
        peers, nodes = await start_nodes(tmp_path)
        try:
            leader = await leader_of(nodes)
            lid = leader.opts.id
            other = next(i for i in peers if i != lid)
            async with grpc.aio.insecure_channel(peers[lid]) as ch:
                stub = admin_pb2_grpc.AdminStub(ch)
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub.TransferLeadership(
                        admin_pb2.TransferLeadershipRequest(group=0, to=other), timeout=5
                    )
                assert "group 0" in (e.value.details() or "")
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub.RemoveMember(
                        admin_pb2.MemberRequest(group=0, node_id=other), timeout=5
                    )
                assert "group 0" in (e.value.details() or "")
            assert leader.driver.groups[1].leader == lid
            assert other in leader.driver.status(1).conf_state.voters
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())
