"""Session expiry follows log time, and a leader stamps log time from its monotonic clock
(kvstore/node/logclock.py), never from its wall clock: a leader whose wall clock was 10
minutes ahead used to stamp that time into the log, every session idle since the last
entry counted as 10 minutes idle and expired (SESSION_IDLE_MS is 5 minutes), and a
client's retry of a write that had applied applied a second time."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import grpc
import pytest

from kvstore._pb import kv_pb2, kv_pb2_grpc
from kvstore.client import AsyncClient
from kvstore.consensus import new_core
from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.types import Config, Entry, EntryType, Ready
from kvstore.node.logclock import LogClock
from kvstore.node.metrics import NodeMetrics
from kvstore.node.pending import GroupState
from kvstore.node.replica import ReplicaLoop
from kvstore.statemachine import Put, encode_batch
from kvstore.statemachine.apply import SESSION_FORGET_MS, SESSION_IDLE_MS

from .inprocess import start_node

pytestmark = pytest.mark.timeout(60)


def test_log_clock_counts_monotonic_time_from_the_log_time_at_term_start() -> None:
    c = LogClock()
    c.observe(5_000)
    assert c.stamp(term=2, now=100.0) == 5_000
    assert c.stamp(term=2, now=101.5) == 6_500
    c.observe(6_000)  # applied, below the stamps: they go on as they were
    assert c.stamp(term=2, now=102.0) == 7_000
    c.observe(9_000)  # applied past the stamps (an earlier leader's entry): rebase on it
    assert c.stamp(term=2, now=102.5) == 9_000
    assert c.stamp(term=2, now=103.0) == 9_500
    # A new term starts from the applied log time (9_500 was only stamped, not applied);
    # another process's monotonic zero is fine, and a stamp is never below the base.
    assert c.stamp(term=3, now=50.0) == 9_000
    assert c.stamp(term=3, now=49.0) == 9_000


class _Storage:
    """What the replica loop reads from storage after a persist: log time 1 s."""

    tight = False

    def first_index(self, group: int) -> int:
        return 1

    def member_addresses(self, group: int) -> dict[int, str]:
        return {}

    def applied_time(self, group: int) -> int:
        return 0

    def log_time(self, group: int) -> int:
        return 1_000


class _Clock:
    def now(self) -> float:
        return 100.0

    def wall_ms(self) -> int:
        return 0


def test_a_time_only_stored_in_the_log_never_becomes_a_base() -> None:
    """A follower stores a deposed leader's entry that never commits, stamped two hours
    past the group's log time (that leader stayed leader through an idle stretch the
    group's log time had not counted, after an earlier leader change). When this node
    leads a later term it stamped from that time: log time leapt two hours, every live
    session was forgotten at once, and a retry of a write that had applied applied
    again. Only applied log time is a base; an applied entry's time is one."""
    loop = ReplicaLoop(
        node_id=1,
        storage=_Storage(),
        send=lambda msgs: None,
        clock=_Clock(),
        metrics=NodeMetrics(),
        endpoints={},
        snapshot_entries=0,
    )
    core = new_core("raft", Config(id=1, rng=random.Random(1)), MemoryStorage(voters={1}))
    g = GroupState(id=1, core=core, applied=0, compacted=0)
    g.log_clock.observe(1_000)  # the group's applied log time
    later = 1_000 + 2 * SESSION_FORGET_MS
    stored = Entry(
        term=2, index=7, type=EntryType.NORMAL, data=encode_batch([Put(b"k", b"v", 5, 1, 1)], later)
    )
    loop.after_persist(g, Ready(entries=(stored,)), [])
    assert g.log_clock.stamp(3, 100.0) == 1_000
    applied = Entry(term=3, index=7, type=EntryType.NORMAL, data=encode_batch([], 4_000))
    loop.after_persist(g, Ready(entries=(applied,), committed=(applied,)), [])
    assert g.log_clock.stamp(3, 100.5) == 4_000


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
        node, addr = await start_node(tmp_path)
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
