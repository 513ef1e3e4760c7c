"""The simulated merge coordinator's rollback rule over a real sharded cluster (both cores,
real storage): a merge is rolled back only once the target's leader has APPLIED an epoch
past the one the prepare recorded. A leader's applied state may lag what it committed (a
new leader, a restart); the coordinator that read "the target's epoch is not the prepared
one" from such a leader rolled back while its CommitMerge was still in the target's log,
and the CommitMerge then applied over the unfrozen source (FINDINGS.md F11, paxos seed
30477 of the long run). Here the source is prepared against the target's NEXT epoch, so
the target's leader is behind it exactly as that lagging leader was.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvstore.consensus.types import Entry
from kvstore.shard import commands as shard_cmds
from kvstore.shard.descriptor import Descriptor, Epoch

from .checkers import SafetyViolation
from .cluster import load_core
from .network import PERFECT
from .shard_actors import Merge
from .shard_checkers import MergeChecker
from .shards import ShardOptions, ShardRun

LEFT, RIGHT = 1, 2


def _until(run: ShardRun, done: Callable[[], bool], what: str, limit: int = 400) -> None:
    c = run.c
    for _ in range(limit):
        if done():
            return
        c.now += 1
        run.step(1.0)
        run.drive()
        c.settle()
    raise AssertionError(f"not within {limit} steps: {what}")


def _descs(run: ShardRun, group: int) -> list[Descriptor | None]:
    return [n.storage.group(group).view.shard for n in run.c.nodes.values() if group in n.cores]


def _propose(run: ShardRun, group: int, cmd: shard_cmds.AdminCommand) -> None:
    c = run.c
    c.nodes[c.leader(group)].cores[group].propose(shard_cmds.encode(cmd))


def _prepared_ahead_of_the_target(kind: str) -> tuple[ShardRun, Descriptor]:
    """A cluster of 3 nodes with shards [b"", b"e") and [b"e", +inf) on all of them, the
    right one frozen into the left one against the left one's next epoch."""
    if load_core(kind) is None:
        pytest.skip(f"the {kind} core does not import yet")
    opts = ShardOptions(nodes=3, shards=2, replicas=3, net=PERFECT, write_prob=0.0)
    run = ShardRun(kind, 7, opts, [])
    c = run.c
    _until(run, lambda: bool(c.leader(LEFT) and c.leader(RIGHT)), "leaders")
    left = c.nodes[c.leader(LEFT)].storage.group(LEFT).view.shard
    right = c.nodes[c.leader(RIGHT)].storage.group(RIGHT).view.shard
    assert left is not None and right is not None
    ahead = Epoch(left.epoch.version + 1, left.epoch.conf_ver)
    _propose(run, RIGHT, shard_cmds.PrepareMerge(LEFT, right.epoch, ahead))
    _until(
        run,
        lambda: all(d is not None and d.merging_into == LEFT for d in _descs(run, RIGHT)),
        "the PrepareMerge applied on every replica",
    )
    src = _descs(run, RIGHT)[0]
    assert src is not None
    return run, src


@pytest.mark.parametrize("kind", ["raft", "paxos"])
def test_a_target_leader_behind_the_prepared_epoch_never_makes_the_merge_roll_back(
    kind: str,
) -> None:
    run, src = _prepared_ahead_of_the_target(kind)
    c = run.c
    try:
        run.merger.merges.append(Merge(LEFT, RIGHT, c.leader(LEFT), c.now, "commit", src))
        # Its CommitMerge applies as nothing while the target is behind: no verdict.
        for _ in range(60):
            c.now += 1
            run.step(1.0)
            run.drive()
            c.settle()
        assert all(d == src for d in _descs(run, RIGHT)), _descs(run, RIGHT)
        assert run.merger.merges, "the merge ended while the target was behind its prepare"
        # The target reaches the prepared epoch (the lagging leader caught up): the
        # coordinator's CommitMerge applies and the merge commits; it never rolled back.
        _propose(run, LEFT, shard_cmds.FenceMerge(0))
        _until(run, lambda: not run.merger.merges, "the merge ended")
        assert run.merger.stats["merges_committed"] == 1, run.merger.stats
        assert all(d is not None and d.covers(src.start, src.end) for d in _descs(run, LEFT)), (
            _descs(run, LEFT)
        )
    finally:
        c.close()


@pytest.mark.parametrize("kind", ["raft", "paxos"])
def test_a_target_past_the_prepared_epoch_makes_the_merge_roll_back(kind: str) -> None:
    run, src = _prepared_ahead_of_the_target(kind)
    c = run.c
    try:
        for _ in range(2):  # the target moves past the prepared epoch
            _propose(run, LEFT, shard_cmds.FenceMerge(0))
        _until(
            run,
            lambda: all(
                d is not None and d.epoch > src.merge_target_epoch for d in _descs(run, LEFT)
            ),
            "the fences applied",
        )
        run.merger.merges.append(Merge(LEFT, RIGHT, c.leader(LEFT), c.now, "commit", src))
        _until(run, lambda: not run.merger.merges, "the merge ended")
        assert run.merger.stats["merges_rolled_back"] == 1, run.merger.stats
        _until(
            run,
            lambda: all(d is not None and not d.merging_into for d in _descs(run, RIGHT)),
            "the rollback applied everywhere",
        )
    finally:
        c.close()


def _entry(index: int, cmd: shard_cmds.AdminCommand) -> Entry:
    return Entry(index=index, term=1, data=shard_cmds.encode(cmd))


def test_the_merge_checker_refuses_a_merge_both_committed_and_rolled_back() -> None:
    frozen = Descriptor(
        id=RIGHT, start=b"e", epoch=Epoch(3, 1), voters=(1, 2, 3), merging_into=LEFT, merge_index=9
    )
    mc = MergeChecker()
    mc.on_admin(1, RIGHT, _entry(10, shard_cmds.RollbackMerge(Epoch(3, 1))), 4)
    # Refused (result 0), or another attempt (the rollback raised the epoch): fine.
    mc.on_admin(1, LEFT, _entry(20, shard_cmds.CommitMerge(frozen)), 0)
    later = Descriptor(
        id=RIGHT, start=b"e", epoch=Epoch(4, 1), voters=(1, 2, 3), merging_into=LEFT, merge_index=30
    )
    mc.on_admin(1, LEFT, _entry(21, shard_cmds.CommitMerge(later)), 5)
    with pytest.raises(SafetyViolation, match="both committed and rolled back"):
        mc.on_admin(2, LEFT, _entry(22, shard_cmds.CommitMerge(frozen)), 5)
