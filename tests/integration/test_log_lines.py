"""Every line a node writes to stderr is a log line with its node id (issue 14), also
the lines that bypass kvstore's logger: gRPC's C core, library loggers, warnings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvstore.client import Client, KVError
from kvstore.security import certs

from .harness import wait_for
from .test_tls import TLSCluster

pytestmark = pytest.mark.integration


def test_json_logs_carry_the_node_id_on_every_line_also_grpc_core_lines(
    tmp_path: Path,
) -> None:
    certs.init(str(tmp_path / "certs"), 1)
    c = TLSCluster(
        tmp_path,
        tmp_path / "certs",
        nodes=1,
        extra=["--log-format", "json"],
        env={"PYTHONASYNCIODEBUG": "1", "PYTHONWARNINGS": "always"},
    )
    try:
        c.start()
        c.wait_leader()
        # A plaintext client on a TLS port: the node's gRPC core logs the failed
        # handshake from C, straight to its stderr.
        with Client(c.endpoints, timeout=1.0) as plain, pytest.raises(KVError):
            plain.get("k")
        wait_for(lambda: "Handshake failed" in c.log(1), 20, "gRPC's handshake log line")
        c.stop(1)  # SIGTERM: the node exits cleanly, after its relay wrote everything
    finally:
        c.close()
    lines = [line for line in c.log(1).splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert all(r.get("node") == 1 for r in records), [r for r in records if r.get("node") != 1]
    core = [r for r in records if r.get("logger") == "grpc"]
    assert core and "Handshake failed" in core[0]["msg"] and core[0]["src"], core[:1]
    events = {r.get("event") for r in records}
    assert {"node_started", "node_stopped"} <= events, "the node's own events still come"
