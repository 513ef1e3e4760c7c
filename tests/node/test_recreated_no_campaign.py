"""A replica created again from an image older than the log its destroyed incarnation
stored does not campaign until its log is back there (NodeDriver.short_of_tombstone):
lagging voters would elect it, and as leader it would overwrite entries a quorum counting
the destroyed replica committed. Real driver, real cores, real storage."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvstore.consensus.paxos import ballot
from kvstore.consensus.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Role,
    Snapshot,
    SnapshotMetadata,
)
from kvstore.node.driver import DriverConfig, NodeDriver
from kvstore.node.metrics import NodeMetrics
from kvstore.shard import descriptor as desc
from kvstore.shard.descriptor import Descriptor, Epoch
from kvstore.storage import NodeStorage
from kvstore.storage.snapshot import write_image

G = 3
SHARD = Descriptor(id=G, start=b"m", epoch=Epoch(2, 4), voters=(1, 2, 3))


@pytest.mark.parametrize("kind", ["raft", "paxos"])
def test_a_recreated_replica_short_of_its_old_log_does_not_campaign(
    tmp_path: Path, kind: str
) -> None:
    t12 = 12 if kind == "raft" else ballot.make(12, 1)
    st = NodeStorage(str(tmp_path / "n2"), map_size=16 << 20, sync=False)
    # Node 2's first replica stored entries 6..30; it was destroyed, then created again
    # from an image at 20 (a leader reusing an image built before the removal).
    st.group(G).bootstrap({1, 2, 3}, SHARD, initial_index=5)
    ents = [Entry(term=t12, index=i, type=EntryType.NOOP) for i in range(6, 31)]
    with st.write() as w:
        w.save(G, hard_state=HardState(term=t12, vote=1, commit=20), entries=ents)
    with st.write() as w:
        w.drop_group(G)
    image = write_image(20, [], [], shard=desc.encode(SHARD))
    cs = ConfState(voters=frozenset({1, 2, 3}))
    with st.write() as w:
        meta = SnapshotMetadata(index=20, term=t12, conf_state=cs)
        hs = HardState(term=t12, vote=1, commit=20)  # as the core saves it
        w.save(G, hard_state=hs, snapshot=Snapshot(metadata=meta, data=image))

    async def main() -> None:
        driver = NodeDriver(
            DriverConfig(
                node_id=2, tick_ms=5, election_ticks=4, groups=(G,), sharded=True, consensus=kind
            ),
            st,
            NodeMetrics(),
            endpoints={1: "127.0.0.1:1", 3: "127.0.0.1:1"},
        )
        driver.start()
        try:
            # Dozens of election timeouts: a replica that may campaign has done so.
            await asyncio.sleep(1.0)
            # Never campaigned (Raft's pre-vote leaves the term alone: the role tells).
            assert driver.groups[G].role == Role.FOLLOWER
            assert st.group(G).initial_state()[0].term == t12
            assert driver.short_of_tombstone(driver.groups[G])
        finally:
            await driver.stop()
        # The leader's entries bring its log back to 30: it may campaign again.
        with st.write() as w:
            w.save(G, entries=ents[15:])
        assert not driver.short_of_tombstone(driver.groups[G])

    try:
        asyncio.run(main())
    finally:
        st.close()


def test_raft_a_recreated_replica_with_a_log_of_a_later_term_campaigns(tmp_path: Path) -> None:
    """Raft orders logs by (last term, index): filled from an image of a later term than
    the destroyed replica's last entry, the replica holds all that one acknowledged and
    may campaign, however short its log (by index alone, two such replicas of three
    wedged the group: storage/tombstone.py)."""
    st = NodeStorage(str(tmp_path / "n2"), map_size=16 << 20, sync=False)
    st.group(G).bootstrap({1, 2, 3}, SHARD, initial_index=5)
    ents = [Entry(term=12, index=i, type=EntryType.NOOP) for i in range(6, 31)]
    with st.write() as w:
        w.save(G, hard_state=HardState(term=12, vote=2, commit=20), entries=ents)
    with st.write() as w:
        w.drop_group(G)
    with st.write() as w:
        meta = SnapshotMetadata(
            index=22, term=13, conf_state=ConfState(voters=frozenset({1, 2, 3}))
        )
        image = write_image(22, [], [], shard=desc.encode(SHARD))
        w.save(
            G,
            hard_state=HardState(term=13, commit=22),
            snapshot=Snapshot(metadata=meta, data=image),
        )
    try:
        driver = NodeDriver(
            DriverConfig(node_id=2, groups=(G,), sharded=True, consensus="raft"),
            st,
            NodeMetrics(),
            endpoints={1: "127.0.0.1:1", 3: "127.0.0.1:1"},
        )
        assert not driver.short_of_tombstone(driver.groups[G])
    finally:
        st.close()
