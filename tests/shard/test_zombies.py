"""Which local replicas a node destroys as zombies (kvstore.node.zombies.zombies)."""

from __future__ import annotations

from kvstore.node.zombies import zombies
from kvstore.shard.descriptor import Descriptor, Epoch

ME = 2


def d(
    gid: int, voters: tuple[int, ...], conf_ver: int, start: bytes = b"", end: bytes = b""
) -> Descriptor:
    return Descriptor(id=gid, start=start, end=end, epoch=Epoch(1, conf_ver), voters=voters)


def test_a_replica_the_map_removed_is_a_zombie() -> None:
    local = {1: d(1, (1, 2, 3), 1, end=b"m"), 2: d(2, (2, 3, 4), 1, start=b"m")}
    shard_map = [d(1, (1, 3, 5), 4, end=b"m"), d(2, (2, 3, 4), 1, start=b"m")]
    assert zombies(local, shard_map, ME) == [1]


def test_a_replica_that_applied_its_own_removal_is_a_zombie() -> None:
    local = {1: d(1, (1, 3, 5), 4)}
    assert zombies(local, [d(1, (1, 3, 5), 4)], ME) == [1]


def test_a_map_older_than_the_replica_does_not_condemn_it() -> None:
    # Just added back as a learner: the map has not caught up with conf_ver 5 yet.
    added = Descriptor(id=1, epoch=Epoch(1, 5), voters=(1, 3, 5), learners=(ME,))
    assert zombies({1: added}, [d(1, (1, 3, 5), 4)], ME) == []


def test_members_meta_unknown_and_unbuilt_replicas_are_kept() -> None:
    local = {0: None, 1: d(1, (1, 2, 3), 1), 7: None, 9: d(9, (1, 3, 4), 2)}
    shard_map = [d(1, (1, 2, 3), 1)]  # 9: not in the map (e.g. merged away): kept
    assert zombies(local, shard_map, ME) == []


def test_nothing_is_destroyed_while_another_local_replica_overlaps_it() -> None:
    # A stale parent [a, z) and the new right half [m, z) it split off: dropping the
    # parent would delete [m, z)'s keys.
    local = {
        1: d(1, (1, 2, 3), 1, start=b"a", end=b"z"),
        5: d(5, (2, 3, 4), 1, start=b"m", end=b"z"),
    }
    shard_map = [d(1, (1, 3, 4), 3, start=b"a", end=b"m"), d(5, (2, 3, 4), 1, start=b"m", end=b"z")]
    assert zombies(local, shard_map, ME) == []


def test_a_frozen_merge_source_whose_merge_committed_elsewhere_is_a_zombie() -> None:
    """The node slept through the CommitMerge and its target replica was repaired away:
    its frozen source, gone from the map, is destroyed; not while a local target replica
    remains (its CommitMerge or a merged snapshot takes the source with it)."""
    src = Descriptor(
        id=5,
        start=b"m",
        epoch=Epoch(2, 1),
        voters=(1, 2, 3),
        merging_into=1,
        merge_index=9,
        merge_target_epoch=Epoch(2, 1),
    )
    merged = Descriptor(id=1, epoch=Epoch(3, 2), voters=(1, 3, 4))
    assert zombies({5: src}, [merged], ME) == [5]
    target = Descriptor(id=1, end=b"m", epoch=Epoch(2, 1), voters=(1, 2, 3))
    assert zombies({1: target, 5: src}, [merged], ME) == [1]  # the target first
    # Not merged (the map still has the target's old range): kept.
    assert zombies({5: src}, [Descriptor(id=1, end=b"m", epoch=Epoch(2, 2))], ME) == []


def _frozen(start: bytes, end: bytes = b"") -> Descriptor:
    return Descriptor(
        id=2,
        start=start,
        end=end,
        epoch=Epoch(4, 1),
        voters=(1, 2, 3),
        merging_into=1,
        merge_index=20,
        merge_target_epoch=Epoch(6, 1),
    )


def test_a_frozen_source_orphaned_by_a_split_of_its_merged_target_is_a_zombie() -> None:
    """FINDINGS F9 (paxos seed 10026): node 2 applied the PrepareMerge of shard 2 into 1,
    then lagged; shard 1 committed the merge and split twice; node 2's replica of shard 1
    caught up by a snapshot of [b"", b"ab"), which does not cover the source. The source
    must go (its range is shards 3's and 4's now, whose snapshots it blocked for ever)."""
    src = _frozen(b"b")
    target = Descriptor(id=1, end=b"ab", epoch=Epoch(9, 1), voters=(1, 2, 3))
    shard_map = [
        target,
        Descriptor(id=3, start=b"ab", end=b"c", epoch=Epoch(9, 1), voters=(1, 2, 3)),
        Descriptor(id=4, start=b"c", epoch=Epoch(8, 1), voters=(1, 2, 3)),
    ]
    assert zombies({1: target, 2: src}, shard_map, ME) == [2]
    # The map does not cover all of it with newer shards (a split not reported yet: the
    # parent, older, still covers part): kept.
    older = [target, Descriptor(id=3, start=b"ab", epoch=Epoch(3, 1), voters=(1, 2, 3))]
    assert zombies({1: target, 2: src}, older, ME) == []
    gap = [target, Descriptor(id=4, start=b"c", epoch=Epoch(8, 1), voters=(1, 2, 3))]
    assert zombies({1: target, 2: src}, gap, ME) == []


def test_a_frozen_source_is_kept_while_its_local_target_may_still_commit_it() -> None:
    """The source's membership changed after its PrepareMerge (the map no longer lists
    this node), but the local target has not moved past the epoch the prepare recorded:
    its CommitMerge will take the source's keys here, which destroying would delete."""
    src = _frozen(b"m")
    removed = Descriptor(id=2, start=b"m", epoch=Epoch(4, 3), voters=(1, 3, 4))
    for t_epoch in (Epoch(6, 1), Epoch(5, 1)):  # at the prepared epoch, or behind it
        target = Descriptor(id=1, end=b"m", epoch=t_epoch, voters=(1, 2, 3))
        assert zombies({1: target, 2: src}, [target, removed], ME) == []
        assert zombies({2: src, 1: None}, [removed], ME) == []
    # Fenced (one version up): the CommitMerge can no longer apply here.
    fenced = Descriptor(id=1, end=b"m", epoch=Epoch(7, 1), voters=(1, 2, 3))
    assert zombies({1: fenced, 2: src}, [fenced, removed], ME) == [2]


def test_a_frozen_source_is_kept_while_a_lagging_ancestor_may_still_create_its_target() -> None:
    """Sharded simulation, paxos seed 30219: node 2 applied the PrepareMerge of shard 2
    [hc, hd) into shard 4 [cd, hc), but lagged in shard 1 [, hc), whose split at cd
    creates shard 4 here. The map already shows the merge; destroying the source here
    deleted [hc, hd)'s keys, and the local shard 4, created by the split moments later,
    applied the CommitMerge from its log over the missing keys (a replica that lost
    acknowledged writes)."""
    src = Descriptor(
        id=2,
        start=b"hc",
        end=b"hd",
        epoch=Epoch(3, 1),
        voters=(1, 2, 3),
        merging_into=4,
        merge_index=40,
        merge_target_epoch=Epoch(3, 1),
    )
    ancestor = Descriptor(id=1, end=b"hc", epoch=Epoch(2, 1), voters=(1, 2, 3))
    shard_map = [
        Descriptor(id=1, end=b"cd", epoch=Epoch(3, 1), voters=(1, 2, 3)),
        Descriptor(id=4, start=b"cd", end=b"hd", epoch=Epoch(4, 1), voters=(1, 2, 3)),
        Descriptor(id=3, start=b"hd", epoch=Epoch(3, 1), voters=(1, 2, 3)),
    ]
    assert zombies({1: ancestor, 2: src}, shard_map, ME) == []
    # Once the local shard 1 has split (its range no longer ends at the source) and its
    # shard 4 has applied the CommitMerge, the source is gone already; a shard 1 that
    # caught up past the split by a snapshot no longer ends there either: destroyable.
    caught_up = Descriptor(id=1, end=b"cd", epoch=Epoch(3, 1), voters=(1, 2, 3))
    assert zombies({1: caught_up, 2: src}, shard_map, ME) == [2]
