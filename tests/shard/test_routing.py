"""Routing on both sides: the node's LocalRouter (which hosted group serves a key, or a
stale-route error carrying the fresh descriptors) and the client's ShardCache."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore._pb import admin_pb2, kv_pb2
from kvstore.client._routing import ShardCache, route_key, route_scan
from kvstore.node.errors import StaleRouteOp
from kvstore.node.routing import LocalRouter
from kvstore.server.convert import shard_pb
from kvstore.shard import Descriptor, Epoch, split
from kvstore.storage import NodeStorage

WHOLE = Descriptor(id=1, voters=(1, 2, 3))


@pytest.fixture
def st(tmp_path: Path) -> NodeStorage:
    s = NodeStorage(str(tmp_path), map_size=8 << 20, sync=False)
    left, right = split(WHOLE, b"m", 2)
    s.group(1).bootstrap({1, 2, 3}, left)
    s.group(2).bootstrap({1, 2, 3}, right)
    return s


def test_node_routes_by_key_and_version(st: NodeStorage) -> None:
    r = LocalRouter(st, True, lambda: [1, 2])
    assert r.for_key(b"apple", 0, 0) == 1  # unrouted: by key
    assert r.for_key(b"m", 0, 0) == 2
    assert r.for_key(b"zz", 2, 2) == 2  # routed with the current version
    assert r.for_range(b"a", b"c", 1, 2) == 1
    with pytest.raises(StaleRouteOp) as e:
        r.for_key(b"pear", 1, 1)  # the client's map predates the split
    assert [d.id for d in e.value.shards] == [2] and e.value.definite
    with pytest.raises(StaleRouteOp, match="version 2, not 1"):
        r.for_key(b"apple", 1, 1)
    with pytest.raises(StaleRouteOp) as e:
        r.for_range(b"a", b"z", 1, 2)  # a scan that crosses the boundary
    assert [d.id for d in e.value.shards] == [1, 2]
    with pytest.raises(StaleRouteOp, match="no replica here"):
        r.for_key(b"a", 7, 1)
    unsharded = LocalRouter(st, False, lambda: [1])
    assert unsharded.for_key(b"anything", 0, 0) == 1


def test_overlapping_local_replicas_route_to_the_newest(st: NodeStorage) -> None:
    """A lagging replica that has not applied a split overlaps its newer sibling."""
    older = Descriptor(id=3, start=b"k", end=b"t", epoch=Epoch(1, 1), voters=(1,))
    st.group(3).bootstrap({1}, older)
    r = LocalRouter(st, True, lambda: [1, 2, 3])
    assert r.for_key(b"p", 0, 0) == 2  # version 2 beats version 1
    assert r.for_key(b"l", 0, 0) == 1


def test_client_cache_learns_from_stale_routes_and_clips_scans() -> None:
    cache = ShardCache()
    cache.load(
        admin_pb2.ShardMapResponse(
            shards=[shard_pb(WHOLE)], nodes={1: "h1:1", 2: "h2:2", 3: "h3:3"}
        )
    )
    op = kv_pb2.Op(get=kv_pb2.GetRequest(key=b"pear"))
    assert route_key(b"pear")(op, cache) == WHOLE
    left, right = split(WHOLE, b"m", 2)
    # A node answered with only the right half: the cache takes it and leaves a gap,
    # which the client fills by refetching the map.
    assert cache.learn([shard_pb(right)])
    assert route_key(b"pear")(op, cache) == right
    assert route_key(b"apple")(op, cache) is None
    assert not cache.learn([shard_pb(WHOLE)])  # an older descriptor changes nothing
    assert cache.learn([shard_pb(left)])
    scan = kv_pb2.Op(scan=kv_pb2.ScanRequest(start=b"a", end=b"z"))
    assert route_scan(b"z")(scan, cache) == left and scan.scan.end == b"m"
    cache.leaders[2] = "h3:3"
    assert cache.endpoints(right) == ["h3:3", "h1:1", "h2:2"]
