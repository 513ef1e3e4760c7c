"""Container health check: asks the node's standard gRPC health service (grpc.health.v1).

Exit 0 when the node reports SERVING, 1 otherwise (Docker's HEALTHCHECK contract). The
address comes from argv[1] or KVSTORE_LISTEN; a wildcard host is probed on loopback.
With TLS (KVSTORE_PEER_CERT_FILE and friends set, as the node has them) the probe
presents the node's own certificate and expects node-<KVSTORE_ID>.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def probe_target(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def _read(name: str) -> bytes:
    with open(os.environ[name], "rb") as f:
        return f.read()


def _channel(target: str) -> grpc.Channel:
    if not os.environ.get("KVSTORE_PEER_CERT_FILE"):
        return grpc.insecure_channel(target)
    creds = grpc.ssl_channel_credentials(
        _read("KVSTORE_PEER_TRUSTED_CA_FILE"),
        _read("KVSTORE_PEER_KEY_FILE"),
        _read("KVSTORE_PEER_CERT_FILE"),
    )
    name = f"node-{os.environ.get('KVSTORE_ID', '1')}"
    return grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", name)])


def main() -> int:
    listen = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("KVSTORE_LISTEN", ":7001")
    timeout = float(os.environ.get("KVSTORE_HEALTH_TIMEOUT", "3"))
    try:
        with _channel(probe_target(listen)) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
    except grpc.RpcError as e:
        print(f"unhealthy: {e.code().name}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
