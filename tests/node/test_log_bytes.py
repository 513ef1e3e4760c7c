"""Compaction by size (node/log_bytes.py): the byte count of the log, and a follower far
behind by bytes (though few entries) catches up from a snapshot, not a replay."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from kvstore.client import AsyncClient
from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.raft import RawNode
from kvstore.consensus.types import Config, Message, MessageType, Ready, Role
from kvstore.node.log_bytes import LogBytes
from kvstore.node.metrics import NodeMetrics
from kvstore.node.pending import GroupState
from kvstore.node.replica import ReplicaLoop
from kvstore.server.process import Node
from tests.node.inprocess import leader as leader_of
from tests.node.inprocess import node_options

pytestmark = pytest.mark.timeout(180)


def test_compact_point_keeps_a_quarter_as_tail() -> None:
    b = LogBytes((i, 100) for i in range(11, 31))  # entries 11..30, 100 B each
    assert b.between(10, 30) == 2000
    assert b.compact_point(30, 2001) == 0  # under the limit: keep everything
    assert b.compact_point(20, 1000) == 17  # (17, 20] keeps 300 B >= 1000 // 4
    assert b.between(17, 20) >= 250
    at = b.compact_point(30, 2000)
    assert b.between(at, 30) >= 500 and b.between(at - 1, 30) > 500
    b.compacted(at)
    assert b.compact_point(30, 2000) == 0
    assert b.between(0, 30) == b.between(at, 30)


def test_replaced_suffix_and_gaps_are_counted_again() -> None:
    b = LogBytes([(1, 10), (2, 10), (3, 10)])
    b.stored(2, 50)  # a leader's entry replaces 2 and 3
    assert b.between(0, 3) == 60
    b.stored(3, 5)
    assert b.between(0, 3) == 65
    b.stored(9, 7)  # a snapshot at 8 put the log past a gap
    assert b.between(0, 9) == 7


def test_a_leader_compacts_by_size_no_further_than_its_followers_store() -> None:
    """A follower that installed a snapshot needs the entries after it. The leader
    compacted by size down to a quarter of the limit whatever its followers had: one
    whose snapshot took longer to send and install than the cluster took to write that
    much found the log compacted past it again, got another snapshot, and never caught
    up under a steady write load. Now the leader holds compaction by size at the slowest
    member's match until the log holds HOLD_FACTOR times the limit."""
    st = MemoryStorage(voters={1, 2, 3})
    core = RawNode(Config(id=1, group=1, rng=random.Random(1), pre_vote=False), st)
    core.campaign()
    _persist(core, st)
    core.step(Message(type=MessageType.VOTE_RESP, group=1, from_=2, to=1, term=1))
    for i in range(40):
        core.propose(b"x%d" % i)
    _persist(core, st)
    last = core.status().last_index
    core.step(Message(type=MessageType.APPEND_RESP, group=1, from_=2, to=1, term=1, index=last))
    _persist(core, st)
    assert core.status().commit == last
    g = GroupState(id=1, core=core, applied=last, compacted=0, role=Role.LEADER, term=1)
    mib = 1 << 20
    loop = ReplicaLoop(
        node_id=1,
        storage=_NotTight(),  # type: ignore[arg-type]
        send=lambda msgs: None,
        clock=None,  # type: ignore[arg-type]
        metrics=NodeMetrics(),
        endpoints={},
        snapshot_entries=0,
        snapshot_bytes=16 * mib,
    )

    def compact_to(entry_mib: int) -> int:
        g.log_bytes = LogBytes((i, entry_mib * mib) for i in range(1, last + 1))
        return loop.plan(g, Ready()).compact_to

    # Node 3 stored nothing yet (it is installing a snapshot, say): hold.
    assert compact_to(1) == 0
    # A member down for good: past HOLD_FACTOR times the limit the log is compacted.
    assert compact_to(2) == g.log_bytes.compact_point(last, 16 * mib) > 0
    core.step(Message(type=MessageType.APPEND_RESP, group=1, from_=3, to=1, term=1, index=20))
    assert compact_to(1) == 20  # no further than node 3's match
    core.step(Message(type=MessageType.APPEND_RESP, group=1, from_=3, to=1, term=1, index=last))
    assert compact_to(1) == g.log_bytes.compact_point(last, 16 * mib) > 20


class _NotTight:
    tight = False


def _persist(core: RawNode, st: MemoryStorage) -> None:
    rd = core.ready()
    st.append(rd.entries)
    if rd.hard_state:
        st.set_hard_state(rd.hard_state)
    core.advance(rd)


def test_follower_far_behind_by_bytes_gets_a_snapshot(tmp_path: Path) -> None:
    """20 entries of ~256 KiB each are far below --snapshot-entries, but over
    HOLD_FACTOR times --snapshot-log-mb 1: the leader compacts though the stopped follower
    has not stored them, and the restarted follower is sent a snapshot (before, it
    replayed the whole log; 1 M writes took 60 s)."""

    async def main() -> None:
        options = {o.id: o for o in node_options(tmp_path, tick_ms=50, snapshot_log_mb=1)}
        peers = {i: o.listen for i, o in options.items()}
        nodes = {i: Node(o) for i, o in options.items()}
        for n in nodes.values():
            await n.start()
        try:
            leader = await leader_of(list(nodes.values()))
            lag = next(i for i, n in nodes.items() if n is not leader)
            await nodes[lag].stop()
            value = b"v" * (256 << 10)
            live = [peers[i] for i in peers if i != lag]
            async with AsyncClient(live, timeout=20) as c:
                for i in range(20):
                    await c.put(f"k{i}", value)
            g = leader.driver.groups[1]
            assert g.compacted > 0, "1 MiB of applied log is compacted"
            commit = g.core.status().commit
            nodes[lag] = Node(options[lag])
            await nodes[lag].start()
            for _ in range(1200):
                if nodes[lag].driver.groups[1].applied >= commit:
                    break
                await asyncio.sleep(0.025)
            assert nodes[lag].driver.groups[1].applied >= commit
            sent = leader.metrics.snapshots_sent.labels("1", "ok")._value.get()
            assert sent >= 1
            got = nodes[lag].storage.kv(1).get(b"k19")
            assert got is not None and got.value == value
        finally:
            for n in nodes.values():
                await n.stop()

    asyncio.run(main())
