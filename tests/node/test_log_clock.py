"""Session expiry follows log time, and a leader stamps log time from its monotonic clock
(kvstore/node/logclock.py), never from its wall clock: a leader whose wall clock was 10
minutes ahead used to stamp that time into the log, every session idle since the last
entry counted as 10 minutes idle and expired (SESSION_IDLE_MS is 5 minutes), and a
client's retry of a write that had applied applied a second time."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from pathlib import Path

import grpc
import pytest

from kvstore._pb import kv_pb2, kv_pb2_grpc
from kvstore.client import AsyncClient
from kvstore.node.logclock import LogClock
from kvstore.server.process import Node, ServeOptions
from kvstore.statemachine.apply import SESSION_IDLE_MS

pytestmark = pytest.mark.timeout(60)


def _port() -> int:
    while True:
        p = random.randint(17000, 17999)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return p


def test_log_clock_counts_monotonic_time_from_the_log_time_at_term_start() -> None:
    c = LogClock()
    c.observe(5_000)
    assert c.stamp(term=2, now=100.0) == 5_000
    assert c.stamp(term=2, now=101.5) == 6_500
    c.observe(9_000)  # seen in the log: the base moves only when a new term begins
    assert c.stamp(term=2, now=102.0) == 7_000
    assert c.stamp(term=3, now=50.0) == 9_000  # another process's monotonic zero: fine
    assert c.stamp(term=3, now=49.0) == 9_000  # never below the base


class _AheadClock:
    """The node's clock with its wall clock jumped 10 minutes ahead."""

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def now(self) -> float:
        return self.inner.now()  # type: ignore[attr-defined, no-any-return]

    def wall_ms(self) -> int:
        return self.inner.wall_ms() + 2 * SESSION_IDLE_MS  # type: ignore[attr-defined, no-any-return]


def test_a_leader_clock_far_ahead_expires_no_session(tmp_path: Path) -> None:
    async def main() -> None:
        addr = f"127.0.0.1:{_port()}"
        node = Node(ServeOptions(id=1, listen=addr, peers={1: addr}, data_dir=str(tmp_path)))
        await node.start()
        try:
            async with grpc.aio.insecure_channel(addr) as ch:
                stub = kv_pb2_grpc.KVStub(ch)
                write = kv_pb2.PutRequest(key=b"k", value=b"v", client_id=7, incarnation=9, seq=1)
                deadline = time.monotonic() + 30
                while True:
                    try:
                        first = await stub.Put(write, timeout=5)
                        break
                    except grpc.aio.AioRpcError:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
                node.driver.replica.clock = _AheadClock(node.driver.replica.clock)  # type: ignore[assignment]
                async with AsyncClient([addr], timeout=10) as other:
                    await other.put("x", "1")  # an entry proposed with the clock ahead
                retry = await stub.Put(write, timeout=10)
                # The retry found its session and the stored answer: not applied again.
                assert retry.revision == first.revision
                log_time = node.storage.kv(1).log_time()
                assert log_time < time.time() * 1000 + SESSION_IDLE_MS / 2
        finally:
            await node.stop()

    asyncio.run(main())
