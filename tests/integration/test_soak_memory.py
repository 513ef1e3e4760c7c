"""Soak (``--soak``; issue 11): one `kvstore serve` process under misbehaving clients for
KVSTORE_SOAK_S seconds (default 60) keeps bounded memory and keeps serving. At once:
batch streams that send 1 GiB of reads a message and never read (reopened every 10 s),
1 MiB writes and oversized requests, thousands of client ids, and a well-behaved client.
Prints the node's peak RSS (VmHWM) and peak anonymous RSS (the heap; LMDB's mapped file
pages are the rest) with ``-s``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest

from kvstore._pb import kv_pb2, kv_pb2_grpc

from .harness import running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.soak, pytest.mark.timeout(1800)]

MiB = 1 << 20
BIG = b"v" * MiB
EVENTUAL = kv_pb2.READ_MODE_EVENTUAL
HEAP_BOUND_KIB = 1024 * 1024
"""The heap may not pass 1 GiB (it grew without bound before: ~1 GiB a request)."""
OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def status_kib(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[name] = int(rest.split()[0])
    return out


class Load:
    def __init__(self, endpoint: str, until: float) -> None:
        self.endpoint = endpoint
        self.until = until
        self.counts: dict[str, int] = {}

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def going(self) -> bool:
        return time.monotonic() < self.until

    async def never_reads(self, ch: grpc.aio.Channel) -> None:
        stub = kv_pb2_grpc.KVStub(ch)
        while self.going():
            call = stub.Batch()
            reopen = time.monotonic() + 10
            req = kv_pb2.BatchRequest(
                ops=[
                    kv_pb2.Op(id=i, get=kv_pb2.GetRequest(key=b"big", read_mode=EVENTUAL))
                    for i in range(1000)
                ]
            )
            while self.going() and time.monotonic() < reopen:
                try:
                    await asyncio.wait_for(call.write(req), 1.0)
                    self.count("unread_requests")
                except TimeoutError:
                    pass  # the node stopped reading us: that is the point
                except grpc.aio.AioRpcError:
                    break
            call.cancel()

    async def huge_values(self, ch: grpc.aio.Channel) -> None:
        stub = kv_pb2_grpc.KVStub(ch)
        while self.going():
            key = f"huge/{random.randrange(32)}".encode()
            req = random.choice(
                [
                    kv_pb2.PutRequest(key=key, value=BIG),
                    kv_pb2.PutRequest(key=key, value=BIG + BIG),  # over the value limit
                    kv_pb2.PutRequest(key=key, value=os.urandom(16) * (5 * MiB // 16)),
                ]
            )
            try:
                await stub.Put(req, timeout=10)
                self.count("huge_puts_ok")
            except grpc.aio.AioRpcError as e:
                self.count(f"huge_puts_{e.code().name}")

    async def many_client_ids(self, ch: grpc.aio.Channel) -> None:
        stub = kv_pb2_grpc.KVStub(ch)
        while self.going():
            req = kv_pb2.PutRequest(
                key=f"ids/{random.randrange(1000)}".encode(),
                value=b"x" * 100,
                client_id=random.getrandbits(63) | 1,
                incarnation=random.getrandbits(63) | 1,
                seq=1,
            )
            try:
                await stub.Put(req, timeout=10)
                self.count("client_ids")
            except grpc.aio.AioRpcError as e:
                self.count(f"client_ids_{e.code().name}")

    async def polite(self, ch: grpc.aio.Channel) -> None:
        stub = kv_pb2_grpc.KVStub(ch)
        while self.going():
            ops = [
                kv_pb2.Op(id=i, put=kv_pb2.PutRequest(key=f"p/{i}".encode(), value=BIG[: 64 << 10]))
                for i in range(16)
            ] + [kv_pb2.Op(id=100 + i, get=kv_pb2.GetRequest(key=b"big")) for i in range(16)]
            try:
                async for resp in stub.Batch(iter([kv_pb2.BatchRequest(ops=ops)]), timeout=30):
                    for r in resp.results:
                        self.count("polite_ok" if not r.HasField("error") else "polite_error")
            except grpc.aio.AioRpcError as e:
                self.count(f"polite_{e.code().name}")


def test_memory_stays_bounded_under_misbehaving_clients(tmp_path: Path) -> None:
    duration = float(os.environ.get("KVSTORE_SOAK_S", "60"))
    with running_cluster(tmp_path, nodes=1, extra=["--map-size-mb", "4096"]) as c:
        c.wait_leader()
        with c.client() as kv:
            kv.put("big", BIG)
        pid = c.procs[1].pid
        start = status_kib(pid)
        peaks = dict(start)

        async def main() -> Load:
            load = Load(c.endpoint(1), time.monotonic() + duration)
            async with grpc.aio.insecure_channel(c.endpoint(1), options=OPTIONS) as ch:
                tasks = [
                    *(asyncio.create_task(load.never_reads(ch)) for _ in range(4)),
                    *(asyncio.create_task(load.huge_values(ch)) for _ in range(4)),
                    *(asyncio.create_task(load.many_client_ids(ch)) for _ in range(8)),
                    asyncio.create_task(load.polite(ch)),
                ]
                while load.going():
                    await asyncio.sleep(0.25)
                    for k, v in status_kib(pid).items():
                        peaks[k] = max(peaks.get(k, 0), v)
                    assert c.alive(1), "the node died"
                    if peaks.get("RssAnon", 0) >= HEAP_BOUND_KIB:
                        break  # failed already: spare the machine the rest
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
            return load

        load = asyncio.run(main())
        end = status_kib(pid)
        print(
            f"\nsoak {duration:.0f}s: start RSS {start['VmRSS'] // 1024} MiB; "
            f"peak RSS (VmHWM) {end['VmHWM'] // 1024} MiB, "
            f"peak heap (RssAnon) {peaks['RssAnon'] // 1024} MiB, "
            f"peak LMDB pages (RssFile) {peaks['RssFile'] // 1024} MiB; "
            f"end RSS {end['VmRSS'] // 1024} MiB; ops {sorted(load.counts.items())}"
        )
        assert c.alive(1)
        assert peaks["RssAnon"] < HEAP_BOUND_KIB, peaks
        assert load.counts.get("polite_ok", 0) > 0
        with c.client() as kv:
            assert kv.get("big", read_mode="eventual") == BIG
