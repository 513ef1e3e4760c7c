"""Every request gets an answer or an error: a reply that cannot be built (here a damaged
kv record on disk) is INTERNAL with a message, on unary calls and on the batch stream,
and the node keeps serving (issue 11, point 5)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kvstore._pb import kv_pb2, kv_pb2_grpc
from kvstore.storage import NodeStorage
from kvstore.storage import keys as storage_keys

from .harness import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EVENTUAL = kv_pb2.READ_MODE_EVENTUAL


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A one-node cluster whose record of key ``bad`` is damaged on disk."""
    root: Path = tmp_path_factory.mktemp("replies")
    c = LocalCluster(root, nodes=1)
    try:
        c.start()
        c.wait_leader()
        with c.client() as kv:
            kv.put("bad", "value")
            kv.put("good", "value")
        c.stop(1)
        st = NodeStorage(str(root / "node1"))
        try:
            with st.env.begin(write=True) as txn:
                # Shorter than the record header: decoding it raises CorruptionError.
                txn.put(storage_keys.kv_key(b"bad"), b"\x01\x02", db=st.dbs.kv)
        finally:
            st.close()
        c.start(1)
        c.wait_leader()
        yield c
    finally:
        c.close()


def test_unary_reply_that_cannot_be_built_is_internal(damaged: LocalCluster) -> None:
    with grpc.insecure_channel(damaged.endpoint(1)) as ch:
        stub = kv_pb2_grpc.KVStub(ch)
        for call, req in (
            (stub.Get, kv_pb2.GetRequest(key=b"bad")),
            (stub.Get, kv_pb2.GetRequest(key=b"bad", read_mode=EVENTUAL)),
            (stub.Scan, kv_pb2.ScanRequest(start=b"a", end=b"z")),
        ):
            # The deadline only keeps the old behaviour (no answer ever) from hanging
            # the test: the answer must be INTERNAL long before it.
            with pytest.raises(grpc.RpcError) as e:
                call(req, timeout=20)
            assert e.value.code() == grpc.StatusCode.INTERNAL, e.value
            assert "internal error" in (e.value.details() or "")
        assert stub.Get(kv_pb2.GetRequest(key=b"good"), timeout=10).kv.value == b"value"


def test_batch_reply_that_cannot_be_built_is_internal(damaged: LocalCluster) -> None:
    ops = [
        kv_pb2.Op(id=1, get=kv_pb2.GetRequest(key=b"bad")),
        kv_pb2.Op(id=2, get=kv_pb2.GetRequest(key=b"good")),
        kv_pb2.Op(id=3, scan=kv_pb2.ScanRequest(start=b"a", end=b"z", read_mode=EVENTUAL)),
        kv_pb2.Op(id=4, get=kv_pb2.GetRequest(key=b"bad", read_mode=EVENTUAL)),
    ]
    with grpc.insecure_channel(damaged.endpoint(1)) as ch:
        stub = kv_pb2_grpc.KVStub(ch)
        # The stream must end by itself once every op is answered (the old code never
        # answered the damaged ones, so it only ended at the deadline).
        responses = list(stub.Batch(iter([kv_pb2.BatchRequest(ops=ops)]), timeout=20))
    results = {r.id: r for resp in responses for r in resp.results}
    assert sorted(results) == [1, 2, 3, 4]
    for i in (1, 3, 4):
        assert results[i].error.code == grpc.StatusCode.INTERNAL.value[0]
        assert "internal error" in results[i].error.message
        assert results[i].error.definite  # a read had no effect
    assert not results[2].HasField("error")
    assert results[2].get.kv.value == b"value"
    assert damaged.alive(1)
