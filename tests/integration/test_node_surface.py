"""What a node shows the outside (issue 11, point 10), with real processes: metrics bind
where --listen binds, the phi gauge follows a dead peer without anyone calling Status,
and health is NOT_SERVING while the storage is full (past its high-water mark)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvstore.client import Client
from kvstore.client.errors import ResourceExhausted
from kvstore.node.failure import SUSPECT_PHI

from .harness import LocalCluster, running_cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _metric(text: str, name: str, **labels: str) -> float | None:
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def test_metrics_bind_where_listen_binds_and_phi_follows_a_dead_peer(tmp_path: Path) -> None:
    with running_cluster(tmp_path, metrics=True) as c:
        c.wait_leader()
        port = c.metrics_ports[1]
        wait_for(lambda: _connects("127.0.0.1", port), 10.0, "node 1's metrics")
        # 127.0.0.2 is loopback too, but not the address the node listens on: a socket
        # bound to 0.0.0.0 (the old behaviour) would accept it.
        assert not _connects("127.0.0.2", port)

        def both_alive() -> bool:
            text = c.metrics(1)
            phis = [_metric(text, "kvstore_peer_phi", peer=p) for p in ("2", "3")]
            return all(phi is not None and phi < SUSPECT_PHI for phi in phis)

        wait_for(both_alive, 10.0, "node 1 to hear from nodes 2 and 3")
        c.kill(3)
        killed = time.monotonic()

        # Nobody calls Status from here on: the gauge must move by itself.
        def suspect() -> float | None:
            phi = _metric(c.metrics(1), "kvstore_peer_phi", peer="3")
            return phi if phi is not None and phi >= SUSPECT_PHI else None

        wait_for(suspect, 5.0, "node 1's phi of the dead node 3 to reach suspect")
        assert time.monotonic() - killed < 5.0
        live = _metric(c.metrics(1), "kvstore_peer_phi", peer="2")
        assert live is not None and live < SUSPECT_PHI


def _health(c: LocalCluster, service: str = "") -> int:
    with grpc.insecure_channel(c.endpoint(1)) as ch:
        req = health_pb2.HealthCheckRequest(service=service)
        return int(health_pb2_grpc.HealthStub(ch).Check(req, timeout=5).status)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_is_not_serving_while_the_storage_is_full(tmp_path: Path) -> None:
    with running_cluster(tmp_path, nodes=1, extra=["--map-size-mb", "24"]) as c:
        c.wait_leader()
        assert _health(c) == SERVING
        value = b"x" * (1 << 20)
        with Client(c.endpoints, timeout=10) as kv, pytest.raises(ResourceExhausted):
            for i in range(64):
                kv.put(f"fill{i}", value)
        wait_for(lambda: _health(c) == NOT_SERVING, 5.0, "health NOT_SERVING")
        assert _health(c, "kvstore.v1.KV") == NOT_SERVING  # the service's own name, alike
        assert c.alive(1)
        with Client(c.endpoints, timeout=10) as kv:
            for i in range(64):
                kv.delete(f"fill{i}")  # deletes go in on a full store
            # Deleted values stay in the watch history until it is compacted (etcd's
            # NOSPACE is also cleared by a compaction); the compaction applies on a full
            # map and is what makes room.
            kv.compact(1 << 62)
        wait_for(lambda: _health(c) == SERVING, 10.0, "health SERVING once there is room")
