"""Client work in flight is bounded (issue 11, point 4), with real `kvstore serve` processes:
a batch stream whose client never reads stops being read, answers travel in messages
under the response limit, the port refuses messages over the server limit, and many
greedy streams fill a node-wide budget that answers RESOURCE_EXHAUSTED."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from kvstore._pb import kv_pb2, kv_pb2_grpc
from kvstore.client import AsyncClient
from kvstore.node.limits import DEFAULT_LIMITS

from .harness import LocalCluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MiB = 1 << 20
EVENTUAL = kv_pb2.READ_MODE_EVENTUAL
BIG = b"v" * MiB  # the value limit
LONG_KEY = b"k" * 500  # ~0.5 MB per 1000-op request: enough to fill gRPC's buffers soon
GREEDY = [("grpc.max_receive_message_length", 256 * MiB)]


def proc_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root: Path = tmp_path_factory.mktemp("backpressure")
    c = LocalCluster(root, nodes=1, metrics=True)
    try:
        c.start()
        c.wait_leader()
        with c.client() as kv:
            kv.put("big", BIG)
            kv.put(LONG_KEY, BIG)
        yield c
    finally:
        c.close()


def inflight(c: LocalCluster) -> tuple[float, float]:
    """The node's in-flight budget as its metrics show it: (ops, bytes)."""
    values = {}
    for line in c.metrics(1).splitlines():
        for name in ("kvstore_client_inflight_ops", "kvstore_client_inflight_bytes"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    return values["kvstore_client_inflight_ops"], values["kvstore_client_inflight_bytes"]


def all_given_back(c: LocalCluster) -> None:
    """Every stream gave back what it held (a leak would end in refusing everything)."""
    wait_for(lambda: inflight(c) == (0.0, 0.0), 10.0, "the in-flight budget back at zero")


def gets(n: int, key: bytes = b"big", first_id: int = 0) -> kv_pb2.BatchRequest:
    return kv_pb2.BatchRequest(
        ops=[
            kv_pb2.Op(id=first_id + i, get=kv_pb2.GetRequest(key=key, read_mode=EVENTUAL))
            for i in range(n)
        ]
    )


async def send_until_blocked(call: grpc.aio.StreamStreamCall, pid: int, limit_kib: int) -> int:
    """Write 1000-get requests (1 GiB of answers each) and never read, until a write
    blocks (the node stopped reading us) or the node's RSS passes ``limit_kib``; the
    number of requests written."""
    for sent in range(64):
        if proc_kib(pid, "VmRSS") > limit_kib:
            return sent
        try:
            await asyncio.wait_for(call.write(gets(1000, LONG_KEY, sent * 1000)), 3.0)
        except TimeoutError:
            return sent
        await asyncio.sleep(0.2)  # let the node work on it (the old code grew here)
    return 64


def test_a_client_that_never_reads_costs_bounded_memory(node: LocalCluster) -> None:
    pid = node.procs[1].pid
    base = proc_kib(pid, "VmRSS")
    bound = base + 200 * 1024  # the old node grew by ~1 GiB per request

    async def main() -> int:
        async with grpc.aio.insecure_channel(node.endpoint(1), options=GREEDY) as ch:
            call = kv_pb2_grpc.KVStub(ch).Batch()
            sent = await send_until_blocked(call, pid, bound)
            await asyncio.sleep(1.0)
            call.cancel()
            return sent

    sent = asyncio.run(main())
    peak = proc_kib(pid, "VmHWM")
    print(f"never-reads: sent {sent} requests, RSS base {base} KiB, peak {peak} KiB")
    assert proc_kib(pid, "VmRSS") < bound, f"node grew {base} -> {proc_kib(pid, 'VmRSS')} KiB"
    assert sent < 64, "the node kept reading from a client that never reads"
    assert peak < bound, f"peak RSS {peak} KiB, base {base} KiB"
    all_given_back(node)
    with node.client() as kv:
        assert kv.get("big", read_mode="eventual") == BIG


def test_many_big_answers_are_split_under_the_response_limit(node: LocalCluster) -> None:
    async def main() -> list[kv_pb2.BatchResponse]:
        async with grpc.aio.insecure_channel(node.endpoint(1), options=GREEDY) as ch:
            call = kv_pb2_grpc.KVStub(ch).Batch()
            await call.write(gets(100))
            await call.done_writing()
            return [r async for r in call]

    responses = asyncio.run(main())
    results = [r for resp in responses for r in resp.results]
    assert sorted(r.id for r in results) == list(range(100))
    assert all(r.get.kv.value == BIG for r in results)
    assert len(responses) >= 25
    assert max(r.ByteSize() for r in responses) <= DEFAULT_LIMITS.max_response_bytes

    async def client_gets() -> list[bytes | None]:
        # The client library over the same stream: 100 concurrent 1 MiB reads, all answered
        # (one 100 MiB response used to break the client's stream).
        # (attempt_timeout: on a busy machine 100 MiB may take the client's default 1 s
        # per attempt, and this test is about the server's answers, not retries.)
        async with AsyncClient([node.endpoint(1)], timeout=30, attempt_timeout=30) as c:
            return await asyncio.gather(*(c.get("big", read_mode="eventual") for _ in range(100)))

    assert asyncio.run(client_gets()) == [BIG] * 100
    all_given_back(node)


def test_scan_answers_stop_at_the_scan_byte_limit(node: LocalCluster) -> None:
    with node.client() as kv:
        for i in range(6):
            kv.put(f"s/{i}", BIG)
    with grpc.insecure_channel(node.endpoint(1), options=GREEDY) as ch:
        page = kv_pb2_grpc.KVStub(ch).Scan(kv_pb2.ScanRequest(start=b"s/", end=b"s0"), timeout=30)
    assert page.more
    assert 1 <= len(page.kvs) < 6
    assert page.ByteSize() < DEFAULT_LIMITS.max_response_bytes
    assert [kv.key for kv in page.kvs] == [f"s/{i}".encode() for i in range(len(page.kvs))]


def test_client_scan_pages_past_the_scan_byte_limit(node: LocalCluster) -> None:
    """The client asks again after a page the node cut at its byte cap: a scan of big
    values returns every row asked for, in order (it used to stop at the first page)."""
    with node.client() as kv:
        for i in range(6):
            kv.put(f"p/{i}", BIG)
        rows = kv.scan("p/", "p0", read_mode="eventual")
        assert [k for k, _ in rows] == [f"p/{i}".encode() for i in range(6)]
        assert all(v == BIG for _, v in rows)
        assert [k for k, _ in kv.scan("p/", "p0", 4)] == [f"p/{i}".encode() for i in range(4)]


def test_the_port_refuses_messages_over_the_server_limit(node: LocalCluster) -> None:
    limit = DEFAULT_LIMITS.server_max_message_bytes
    with grpc.insecure_channel(
        node.endpoint(1), options=[("grpc.max_send_message_length", -1)]
    ) as ch:
        stub = kv_pb2_grpc.KVStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Put(kv_pb2.PutRequest(key=b"huge", value=b"x" * (limit + MiB)), timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
        # Under the server limit but over the value limit: the limit is named.
        with pytest.raises(grpc.RpcError) as e:
            stub.Put(kv_pb2.PutRequest(key=b"huge", value=b"x" * (2 * MiB)), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_value_bytes" in (e.value.details() or "")
    assert node.alive(1)


def test_greedy_streams_fill_the_node_budget_and_others_get_resource_exhausted(
    node: LocalCluster,
) -> None:
    pid = node.procs[1].pid
    base = proc_kib(pid, "VmRSS")
    budget_kib = DEFAULT_LIMITS.max_node_inflight_bytes // 1024
    bound = base + budget_kib + 200 * 1024

    async def main() -> list[kv_pb2.OpResult]:
        async with grpc.aio.insecure_channel(node.endpoint(1), options=GREEDY) as ch:
            stub = kv_pb2_grpc.KVStub(ch)
            # Each greedy stream holds up to its own bound of answers it never takes.
            greedy = [stub.Batch() for _ in range(16)]
            for call in greedy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(call.write(gets(1000)), 3.0)
                assert proc_kib(pid, "VmRSS") < bound
            await asyncio.sleep(0.5)
            polite = stub.Batch()
            await polite.write(gets(3))
            await polite.done_writing()
            answers = [r async for resp in polite for r in resp.results]
            for call in greedy:
                call.cancel()
            return answers

    answers = asyncio.run(main())
    print(f"greedy: RSS base {base} KiB, peak {proc_kib(pid, 'VmHWM')} KiB")
    assert proc_kib(pid, "VmHWM") < bound
    assert len(answers) == 3
    for r in answers:
        assert r.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], r
        assert "max_node_inflight_bytes" in r.error.message and r.error.definite

    async def served_again() -> bytes | None:
        async with AsyncClient([node.endpoint(1)], timeout=10) as c:
            for _ in range(50):  # the cancelled streams give their budget back
                with contextlib.suppress(Exception):
                    return await c.get("big", read_mode="eventual")
                await asyncio.sleep(0.1)
        return None

    assert asyncio.run(served_again()) == BIG
    all_given_back(node)
