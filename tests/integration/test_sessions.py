"""Client sessions against real processes: exactly-once must never cost a write.

Issue 11.1: a client restarted with the same client_id started its seqs at 1 again, and
the session table answered its writes with the earlier process's stored answers (a put
acknowledged but never written, a cas reported True that changed nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from kvstore._pb import kv_pb2, kv_pb2_grpc
from kvstore.client import ResourceExhausted

from .harness import running_cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CLIENT_ID = 424242

_CLIENT = f"""
import json, sys
from kvstore.client import Client
eps, value, expected, new = sys.argv[1:]
with Client(eps.split(","), timeout=10.0, client_id={CLIENT_ID}) as c:
    rev = c.put("k", value)
    swapped = c.cas("c", None if expected == "-" else expected, new)
    print(json.dumps(dict(rev=rev, swapped=swapped)))
"""


def _client_process(endpoints: list[str], value: str, expected: str, new: str) -> dict[str, int]:
    """One client process's life: a put and a cas, then it exits."""
    out = subprocess.run(
        [sys.executable, "-c", _CLIENT, ",".join(endpoints), value, expected, new],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    answer: dict[str, int] = json.loads(out.stdout)
    return answer


def test_a_restarted_client_with_the_same_id_really_writes(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.wait_leader()
        first = _client_process(cluster.endpoints, "v1", "-", "x")
        second = _client_process(cluster.endpoints, "v2", "x", "y")
        with cluster.client() as c:
            assert c.get("k") == b"v2", "the second process's put was acknowledged: it applied"
            assert c.get("c") == b"y", "the second process's cas said True: it applied"
        assert first["swapped"] and second["swapped"]
        assert second["rev"] > first["rev"], "a new write has a new revision"

        leader = cluster.wait_leader()
        with grpc.insecure_channel(cluster.endpoint(leader)) as ch:
            stub = kv_pb2_grpc.KVStub(ch)
            with pytest.raises(grpc.RpcError) as e:
                stub.Put(kv_pb2.PutRequest(key=b"k", value=b"v3", client_id=7, seq=1), timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "incarnation" in (e.value.details() or "")
            session = {"client_id": 7, "incarnation": 99, "seq": 1}
            r1 = stub.Put(kv_pb2.PutRequest(key=b"k", value=b"v3", **session), timeout=10)
            r2 = stub.Put(kv_pb2.PutRequest(key=b"k", value=b"v3", **session), timeout=10)
            assert r1.revision == r2.revision, "a retry within one incarnation: exactly once"


def test_a_full_map_still_takes_deletes_and_recovers_while_running(
    tmp_path: Path, consensus: str
) -> None:
    """Issue 11.2: once 1 MiB values filled the map even deletes failed and only a
    restart with a larger map got the node out. Writes that add data must be refused
    while deletes (and the compaction they allow) still apply, and the node must take
    writes again once they made room."""
    value = b"x" * (1 << 20)
    with running_cluster(tmp_path, consensus=consensus, extra=["--map-size-mb", "24"]) as cluster:
        cluster.wait_leader()
        written: list[str] = []
        with cluster.client(timeout=10.0) as c:
            for i in range(60):
                try:
                    c.put(f"big{i}", value)
                except ResourceExhausted:
                    break
                written.append(f"big{i}")
            else:
                raise AssertionError("60 MiB of values never filled a 24 MiB map")
            assert len(written) >= 2
            for key in written:
                assert c.delete(key), key
            assert c.get(written[-1]) is None
            # The deleted values stay in the watch history until it is compacted (as in
            # etcd, where NOSPACE needs a compaction): compact to now (a future revision
            # compacts to each shard's current one), which must apply on a full map too.
            c.compact(1 << 62)

            def writable() -> bool:
                try:
                    c.put("again", value)
                except ResourceExhausted:
                    return False
                return True

            wait_for(writable, 30, "the node to take writes again")
            assert c.get("again") == value
        assert all(cluster.alive(i) for i in (1, 2, 3))
