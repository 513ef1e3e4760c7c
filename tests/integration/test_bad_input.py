"""Bad input never takes a node down: junk bytes on the port, undecodable requests, peer
batches from another cluster or an unknown node (rejected and counted in the metrics)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kvstore._pb import peer_pb2, peer_pb2_grpc

from .harness import LocalCluster, running_cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def mcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root: Path = tmp_path_factory.mktemp("bad-input")
    c = LocalCluster(root, metrics=True)
    try:
        c.start()
        c.wait_leader()
        yield c
    finally:
        c.close()


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + ("{" + want + "}" if want else " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _still_serves(c: LocalCluster) -> None:
    with c.client() as kv:
        kv.put("alive", "yes")
        assert kv.get("alive") == b"yes"
    assert all(c.alive(i) for i in (1, 2, 3))


def test_random_bytes_on_the_port_are_survived(mcluster: LocalCluster) -> None:
    ports = [*mcluster.ports.values(), *mcluster.metrics_ports.values()]
    for port in ports:
        for payload in (
            os.urandom(4096),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(2048),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x00" * 100000,
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                try:
                    s.sendall(payload)
                    s.settimeout(1)
                    s.recv(1024)
                except OSError:
                    pass  # the server may close on us: that is the point
    _still_serves(mcluster)
    assert "kvstore_term" in mcluster.metrics(1)


def test_undecodable_request_is_an_error_not_a_crash(mcluster: LocalCluster) -> None:
    with grpc.insecure_channel(mcluster.endpoint(1)) as ch:
        for method in ("/kvstore.v1.KV/Put", "/kvstore.v1.Admin/Status"):
            call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as e:
                call(b"\xff\xff\xff\xff" + os.urandom(64), timeout=5)
            assert e.value.code() != grpc.StatusCode.OK
        stream = ch.stream_stream("/kvstore.v1.Peer/Stream")
        with pytest.raises(grpc.RpcError):
            list(stream(iter([b"\x0a\xff\xff\xff\x0f" + os.urandom(32)]), timeout=5))
    _still_serves(mcluster)


def _peer_batch(cluster_id: str, sender: int, to: int) -> peer_pb2.PeerBatch:
    b = peer_pb2.PeerBatch(cluster_id=cluster_id, to=to)
    setattr(b, "from", sender)
    b.messages.add(type=7, group=1, to=to, term=999)
    setattr(b.messages[0], "from", sender)
    return b


@pytest.mark.parametrize(
    ("cluster_id", "sender", "reason", "error"),
    [
        ("another-cluster", 2, "cluster_id", "cluster id mismatch"),
        ("kvstore", 99, "unknown_node", "unknown sender"),
    ],
)
def test_foreign_peer_batch_is_rejected_and_counted(
    mcluster: LocalCluster, cluster_id: str, sender: int, reason: str, error: str
) -> None:
    before = _metric(mcluster.metrics(1), "kvstore_peer_batches_rejected_total", reason=reason)
    term_before = mcluster.node_status(1)["groups"][0]["term"]
    with grpc.insecure_channel(mcluster.endpoint(1)) as ch:
        stub = peer_pb2_grpc.PeerStub(ch)
        replies = list(stub.Stream(iter([_peer_batch(cluster_id, sender, 1)]), timeout=5))
    assert len(replies) == 1 and error in replies[0].error
    wait_for(
        lambda: (
            _metric(mcluster.metrics(1), "kvstore_peer_batches_rejected_total", reason=reason)
            == before + 1
        ),
        5,
        "the rejection to be counted",
    )
    # The term-999 heartbeat inside never reached the core.
    assert mcluster.node_status(1)["groups"][0]["term"] == term_before
    _still_serves(mcluster)


def test_metrics_and_health(mcluster: LocalCluster) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    leader = mcluster.wait_leader()
    text = mcluster.metrics(leader)
    assert _metric(text, "kvstore_is_leader", group="1") == 1
    assert _metric(text, "kvstore_term", group="1") >= 1
    assert "kvstore_persist_seconds_bucket" in text
    assert "kvstore_proposal_seconds_bucket" in text
    assert _metric(text, "kvstore_storage_map_bytes") == 1 << 30
    with grpc.insecure_channel(mcluster.endpoint(leader)) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_full_storage_is_resource_exhausted_not_a_crash(tmp_path: Path) -> None:
    from kvstore.client import KVError, ResourceExhausted

    with running_cluster(tmp_path, extra=["--map-size-mb", "1"]) as c:
        c.wait_leader()
        errors: list[KVError] = []
        with c.client(timeout=5) as kv:
            for i in range(30):
                try:
                    kv.put(f"k{i}", b"x" * 60000)
                except KVError as e:
                    errors.append(e)
            assert errors and all(isinstance(e, ResourceExhausted) for e in errors), errors
            assert "storage is full" in errors[-1].message
        assert all(c.alive(i) for i in (1, 2, 3))
        # The nodes still answer reads from what they applied (the acknowledged writes).
        applied = []
        for i in (1, 2, 3):
            with c.client(only=[i], timeout=5) as one:
                applied.append(one.get("k0", read_mode="eventual"))
        assert b"x" * 60000 in applied
