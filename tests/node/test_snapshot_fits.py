"""A range snapshot may not reach its core while another local replica's range overlaps
it (TiKV #7002), also when the image came by stream (Snapshot.data then refers to the
received file): the check reads the descriptor from the image header only."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from kvstore.consensus.types import Message, MessageType, Snapshot, SnapshotMetadata
from kvstore.node.lifecycle import snapshot_fits
from kvstore.node.shards import DriverReplicas
from kvstore.shard import descriptor as desc
from kvstore.shard.descriptor import Descriptor
from kvstore.storage import NodeStorage
from kvstore.storage.snapshot import staged_ref, write_image


def test_overlap_is_found_in_streamed_and_inline_images(tmp_path: Path) -> None:
    st = NodeStorage(str(tmp_path / "db"), map_size=64 << 20)
    try:
        st.group(5).bootstrap({1, 2, 3}, shard=Descriptor(id=5, start=b"a", end=b"m"))
        driver = DriverReplicas(cast(Any, SimpleNamespace(groups={5: None}, storage=st)))

        def message(shard: Descriptor, streamed: bool) -> Message:
            image = write_image(9, [], [], shard=desc.encode(shard))
            data = image
            if streamed:
                path = tmp_path / f"in-{shard.id}.img"
                path.write_bytes(image)
                data = staged_ref(str(path))
            snap = Snapshot(metadata=SnapshotMetadata(index=9, term=1), data=data)
            return Message(type=MessageType.SNAPSHOT, group=shard.id, from_=2, to=1, snapshot=snap)

        for streamed in (False, True):
            assert not snapshot_fits(
                driver, message(Descriptor(id=7, start=b"k", end=b"z"), streamed)
            )
            assert snapshot_fits(driver, message(Descriptor(id=7, start=b"m", end=b"z"), streamed))
    finally:
        st.close()


def test_a_merge_source_frozen_into_the_snapshots_group_does_not_stop_it(tmp_path: Path) -> None:
    """A target replica that lagged past its CommitMerge gets the merged snapshot although
    its local source (frozen into it) overlaps: the install absorbs the source."""
    st = NodeStorage(str(tmp_path / "db"), map_size=64 << 20)
    try:
        frozen = Descriptor(id=5, start=b"m", merging_into=7, merge_index=9)
        st.group(5).bootstrap({1, 2, 3}, shard=frozen)
        driver = DriverReplicas(cast(Any, SimpleNamespace(groups={5: None}, storage=st)))

        def message(shard: Descriptor) -> Message:
            image = write_image(9, [], [], shard=desc.encode(shard))
            snap = Snapshot(metadata=SnapshotMetadata(index=9, term=1), data=image)
            return Message(type=MessageType.SNAPSHOT, group=shard.id, from_=2, to=1, snapshot=snap)

        merged = Descriptor(id=7, start=b"a", epoch=desc.Epoch(2, 1))
        assert snapshot_fits(driver, message(merged))
        # Not another group's snapshot, nor one no newer than the source.
        assert not snapshot_fits(
            driver, message(Descriptor(id=8, start=b"a", epoch=desc.Epoch(2, 1)))
        )
        assert not snapshot_fits(driver, message(Descriptor(id=7, start=b"a")))
    finally:
        st.close()
