"""Descriptor, shard map, split/merge rules and admin command codecs (kvstore.shard)."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.shard import Descriptor, Epoch, ShardMap, SplitError, merge, split
from kvstore.shard import commands as cmds
from kvstore.shard import descriptor as desc
from kvstore.shard.layout import default_split_keys, initial_map, meta_voters

keys = st.binary(min_size=1, max_size=6)


def whole(voters: tuple[int, ...] = (1, 2, 3)) -> Descriptor:
    return Descriptor(id=1, voters=voters)


def test_contains_and_covers() -> None:
    d = Descriptor(id=2, start=b"g", end=b"n")
    assert d.contains(b"g") and d.contains(b"mzz") and not d.contains(b"n")
    assert not d.contains(b"a")
    assert d.covers(b"h", b"k") and not d.covers(b"h", b"") and not d.covers(b"a", b"h")
    assert Descriptor(id=3, start=b"t").covers(b"x", b"")
    with pytest.raises(ValueError, match="empty range"):
        Descriptor(id=4, start=b"b", end=b"a")


def test_split_rules() -> None:
    left, right = split(whole(), b"m", 7)
    assert (left.id, left.start, left.end) == (1, b"", b"m")
    assert (right.id, right.start, right.end) == (7, b"m", b"")
    assert left.epoch == right.epoch == Epoch(2, 1)
    assert right.voters == (1, 2, 3)
    for bad in (b"", left.start):
        with pytest.raises(SplitError, match="not strictly inside"):
            split(left, bad, 8)
    with pytest.raises(SplitError, match="not strictly inside"):
        split(left, b"m", 8)  # the end is not inside
    with pytest.raises(SplitError, match="fresh id"):
        split(left, b"c", 1)


def test_merge_then_resplit_never_looks_unchanged() -> None:
    """CockroachDB's generation bug: merge + re-split at the same key must not
    reproduce the old descriptor."""
    left, right = split(whole(), b"m", 7)
    merged = merge(left, right)
    assert merged.epoch.version == 3
    again, _ = split(merged, b"m", 8)
    assert again != left and desc.newer(again, left)


def test_merge_refuses_non_adjacent_or_differently_placed() -> None:
    a = Descriptor(id=1, end=b"g", voters=(1, 2, 3))
    c = Descriptor(id=3, start=b"n", voters=(1, 2, 3))
    with pytest.raises(SplitError, match="not adjacent"):
        merge(a, c)
    b = Descriptor(id=2, start=b"g", end=b"n", voters=(2, 3, 4))
    with pytest.raises(SplitError, match="same replicas"):
        merge(a, b)


@given(
    st.builds(
        Descriptor,
        id=st.integers(0, 2**63),
        start=st.binary(max_size=8),
        end=st.just(b""),
        epoch=st.builds(Epoch, st.integers(0, 2**63), st.integers(0, 2**63)),
        voters=st.lists(st.integers(1, 2**63), max_size=5).map(tuple),
        learners=st.lists(st.integers(1, 2**63), max_size=5).map(tuple),
    )
)
def test_descriptor_codec_roundtrip(d: Descriptor) -> None:
    assert desc.decode(desc.encode(d)) == d


@given(st.binary(max_size=64))
def test_descriptor_decode_rejects_junk_cleanly(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        desc.decode(data)


def test_admin_command_codec() -> None:
    left, right = split(whole(), b"k", 9)
    for c in (
        cmds.Split(9, b"k", Epoch(3, 2)),
        cmds.AllocIds(4),
        cmds.Report((left, right)),
    ):
        data = cmds.encode(c)
        assert cmds.is_admin(data)
        assert cmds.decode(data) == c
    with pytest.raises(ValueError):
        cmds.decode(cmds.encode(cmds.AllocIds(1)) + b"x")
    assert not cmds.is_admin(b"\x01\x00\x00\x00\x00")


@given(st.binary(max_size=48))
def test_admin_decode_rejects_junk_cleanly(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        cmds.decode(bytes([cmds.ADMIN_MAGIC]) + data)


def test_meta_state_alloc_and_report_roundtrip() -> None:
    m = cmds.initial_meta(initial_map([1, 2, 3], 3))
    assert m.apply(cmds.AllocIds(2)) == 4 and m.next_id == 6
    left, right = split(m.shards.get(2) or whole(), b"k", 4)
    assert m.apply(cmds.Report((left, right))) == 2
    m.shards.check()
    again = cmds.MetaState.decode(m.encode())
    assert again.next_id == 6 and list(again.shards) == list(m.shards)


def test_lookup_and_overlapping() -> None:
    m = initial_map([1, 2, 3, 4, 5], 4)
    m.check()
    assert [d.id for d in m] == [1, 2, 3, 4]
    assert m.lookup(b"") is not None and m.lookup(b"")
    assert (m.lookup(b"apple") or whole()).id == 1
    assert (m.lookup(b"g") or whole()).id == 2
    assert (m.lookup(b"zzz") or whole()).id == 4
    assert [d.id for d in m.overlapping(b"h", b"p")] == [2, 3]
    assert [d.id for d in m.overlapping(b"", b"")] == [1, 2, 3, 4]
    assert [d.id for d in m.overlapping(b"n", b"n\x00")] == [3]
    # Replicas spread: every node carries 3 * 4 / 5 rounded.
    counts = {n: sum(n in d.voters for d in m) for n in range(1, 6)}
    assert sorted(counts.values()) == [2, 2, 2, 3, 3]
    assert meta_voters([5, 1, 3, 2]) == (1, 2, 3)


def test_report_is_idempotent_and_never_goes_back() -> None:
    m = ShardMap([whole()])
    left, right = split(whole(), b"m", 2)
    assert m.report([left, right]) == [left, right]
    assert m.report([left, right]) == []  # duplicate
    assert m.report([whole()]) == []  # stale
    l2, r2 = split(right, b"t", 3)
    # Out of order: the newer split arrives before a late copy of the older one.
    assert m.report([l2, r2]) == [l2, r2]
    assert m.report([right]) == []
    m.check()
    assert [d.id for d in m] == [1, 2, 3]


def test_report_that_would_leave_a_gap_changes_nothing() -> None:
    m = ShardMap([whole()])
    _, right = split(whole(), b"m", 2)
    assert m.report([right]) == []  # the left half alone would leave [b"", b"m") unowned
    assert [d.id for d in m] == [1]


def test_default_split_keys() -> None:
    assert default_split_keys(1) == []
    assert default_split_keys(4) == [b"g", b"n", b"t"]
    many = default_split_keys(100)
    assert many == sorted(set(many)) and len(many) == 99
    with pytest.raises(ValueError):
        default_split_keys(0)
    with pytest.raises(ValueError, match="strictly increasing"):
        initial_map([1], 3, split_keys=[b"b", b"a"])


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 40))
def test_random_splits_and_merges_tile_the_key_space(seed: int, steps: int) -> None:
    """Ranges never overlap or leave gaps after any sequence of splits and merges, as
    seen by the map through reports delivered late, twice and out of order; lookup
    agrees with a linear search."""
    rng = random.Random(seed)
    truth = {1: whole()}
    m = ShardMap([whole()])
    backlog: list[list[Descriptor]] = []
    next_id = 2
    for _ in range(steps):
        shards = sorted(truth.values(), key=lambda d: d.start)
        if rng.random() < 0.6:
            d = rng.choice(shards)
            at = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 3)))
            try:
                left, right = split(d, at, next_id)
            except SplitError:
                continue
            next_id += 1
            del truth[d.id]
            truth[left.id], truth[right.id] = left, right
            backlog.append([left, right])
        elif len(shards) > 1:
            i = rng.randrange(len(shards) - 1)
            merged = merge(shards[i], shards[i + 1])
            del truth[shards[i + 1].id]
            truth[merged.id] = merged
            backlog.append([merged])
        while backlog and rng.random() < 0.5:
            report = backlog.pop(rng.randrange(len(backlog)))
            m.report(report)
            if rng.random() < 0.2:
                m.report(report)  # duplicate
            m.check()
    # Eventually every report arrives, oldest first or not: the map ends at the truth.
    rng.shuffle(backlog)
    for _ in range(2):
        for report in backlog:
            m.report(report)
            m.check()
    m.report(list(truth.values()))
    m.check()
    assert sorted(m, key=lambda d: d.id) == sorted(truth.values(), key=lambda d: d.id)
    for _ in range(20):
        k = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(0, 4)))
        assert m.lookup(k) == next(d for d in truth.values() if d.contains(k))


def test_shard_modules_are_pure() -> None:
    """kvstore/shard is pure like the cores: the simulation and the driver share it."""
    import ast
    import pathlib

    root = pathlib.Path(cmds.__file__).parent
    forbidden = {"asyncio", "grpc", "lmdb", "time", "socket", "threading", "os", "random"}
    bad = []
    for f in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            bad += [f"{f.name}: {n}" for n in names if n.split(".")[0] in forbidden]
    assert not bad, bad


def test_merge_rules_check_prepare_commit_rollback() -> None:
    from kvstore.shard import merging as m

    left = Descriptor(id=1, end=b"m", voters=(1, 2, 3))
    right = Descriptor(id=2, start=b"m", voters=(3, 2, 1), epoch=Epoch(4, 2))
    m.check_merge(left, right)
    with pytest.raises(m.MergeError, match="last shard"):
        m.check_merge(right, left)
    with pytest.raises(m.MergeError, match="not adjacent"):
        m.check_merge(left, Descriptor(id=3, start=b"n", voters=(1, 2, 3)))
    with pytest.raises(m.MergeError, match="not on the same nodes"):
        m.check_merge(left, Descriptor(id=3, start=b"m", voters=(1, 2, 4)))
    with pytest.raises(m.MergeError, match="move is under way"):
        m.check_merge(left, Descriptor(id=3, start=b"m", voters=(1, 2, 3), learners=(4,)))
    src = m.prepare(right, 1, 40, left.epoch)
    with pytest.raises(m.MergeError, match="already merging"):
        m.check_merge(left, src)
    with pytest.raises(m.MergeError, match="already merging"):
        m.prepare(src, 1, 41, left.epoch)
    # The source wrote revisions up to 40; the target commits at its index 10, so the
    # next write (index 11) must be above 40.
    merged = m.commit(left, src, 10)
    assert (merged.start, merged.end, merged.epoch) == (b"", b"", Epoch(5, 1))
    assert 11 + merged.revision_offset > 40 and merged.merging_into == 0
    assert m.commit(left, src, 100).revision_offset == 0  # the target is already above
    with pytest.raises(m.MergeError, match="changed since"):
        m.commit(split(left, b"c", 9)[0], src, 10)
    with pytest.raises(m.MergeError, match="not prepared"):
        m.commit(left, right, 10)
    back = m.rollback(src)
    assert back.epoch == Epoch(5, 2) and back.merging_into == 0 and desc.newer(back, right)
    with pytest.raises(m.MergeError, match="not merging"):
        m.rollback(back)


def test_merge_commands_and_merge_descriptors_roundtrip() -> None:
    src = Descriptor(
        id=2,
        start=b"m",
        voters=(1, 2, 3),
        revision_offset=7,
        merging_into=1,
        merge_index=40,
        merge_target_epoch=Epoch(3, 2),
    )
    assert desc.decode(desc.encode(src)) == src
    plain = Descriptor(id=2, start=b"m")
    assert desc.encode(plain)[0] == 1  # no merge fields: the format written before merges
    for c in (
        cmds.PrepareMerge(1, Epoch(4, 2), Epoch(3, 2)),
        cmds.CommitMerge(src),
        cmds.RollbackMerge(Epoch(4, 2)),
    ):
        assert cmds.decode(cmds.encode(c)) == c
    with pytest.raises(ValueError):
        cmds.decode(cmds.encode(cmds.RollbackMerge(Epoch(1, 1)))[:-1])


def test_a_target_merged_away_is_read_from_the_map() -> None:
    from kvstore.shard.descriptor import Descriptor as D
    from kvstore.shard.descriptor import Epoch as E
    from kvstore.shard.merging import target_merged_away

    src = D(id=3, start=b"t", epoch=E(2, 1), merging_into=2, merge_target_epoch=E(4, 1))
    merged = D(id=1, end=b"t", epoch=E(5, 1))
    assert target_merged_away(src, [merged, D(id=3, start=b"t", epoch=E(2, 1))])
    # The target is still in the map, or the source is gone (absorbed first), or the
    # shard ending at the source is older than the prepared target (never reported).
    tgt = D(id=2, start=b"g", end=b"t", epoch=E(4, 1))
    assert not target_merged_away(src, [D(id=1, end=b"g"), tgt, D(id=3, start=b"t")])
    assert not target_merged_away(src, [D(id=1, epoch=E(6, 1))])
    parent = D(id=1, end=b"t", epoch=E(3, 1))
    assert not target_merged_away(src, [parent, D(id=3, start=b"t", epoch=E(2, 1))])
