"""RaftLog: the stable storage plus the unstable tail, read as one log."""

from __future__ import annotations

import pytest

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.raft.log import RaftLog
from kvstore.consensus.types import (
    CompactedError,
    ConfState,
    ConsensusError,
    Entry,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
)


def ents(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(term=t, index=start + i, data=b"d" * 10) for i, t in enumerate(terms)]


def make(stable: list[int], unstable: list[int]) -> RaftLog:
    st = MemoryStorage(voters={1})
    st.append(ents(*stable))
    log = RaftLog(st, 1 << 20)
    if unstable:
        log.append(ents(*unstable, start=len(stable) + 1))
    return log


def test_reads_span_storage_and_unstable() -> None:
    log = make([1, 1, 2], [2, 3])
    assert (log.first_index(), log.last_index(), log.stable_last()) == (1, 5, 3)
    assert [log.term(i) for i in range(0, 6)] == [0, 1, 1, 2, 2, 3]
    assert [e.index for e in log.entries(2, 6)] == [2, 3, 4, 5]
    with pytest.raises(UnavailableError):
        log.term(6)
    # The size cap keeps at least one entry and stops at the cap, across the boundary.
    assert [e.index for e in log.entries(3, 6, max_size=1)] == [3]
    assert [e.index for e in log.entries(3, 6, max_size=2 * 34)] == [3, 4]


def test_conflicting_append_replaces_stable_suffix() -> None:
    log = make([1, 1, 1, 1], [])
    assert log.maybe_append(2, 1, 0, tuple(ents(2, 2, start=3))) == 4
    assert [log.term(i) for i in range(1, 5)] == [1, 1, 2, 2]
    assert [e.index for e in log.unstable_to_persist()] == [3, 4]
    # The storage still holds the old suffix, but it is never read.
    assert log.storage.term(3) == 1


def test_append_matching_prefix_is_a_no_op_and_commit_is_capped() -> None:
    log = make([1, 1, 1], [])
    assert log.maybe_append(1, 1, 9, tuple(ents(1, start=2))) == 2
    assert log.unstable_to_persist() == []
    assert log.committed == 2  # min(leader commit, last new entry)
    assert log.maybe_append(3, 2, 9, ()) is None  # (3, 2) is not in our log


def test_conflict_below_commit_is_refused() -> None:
    log = make([1, 1, 1], [])
    log.commit_to(3)
    with pytest.raises(ConsensusError):
        log.maybe_append(1, 1, 3, tuple(ents(2, start=2)))


def test_find_conflict_by_term() -> None:
    log = make([1, 1, 2, 2, 4], [])
    assert log.find_conflict_by_term(5, 3) == (4, 2)
    assert log.find_conflict_by_term(5, 1) == (2, 1)
    assert log.find_conflict_by_term(5, 0) == (0, 0)
    assert log.find_conflict_by_term(9, 9) == (5, 4)  # capped at the last index


def test_up_to_date() -> None:
    log = make([1, 2, 2], [])
    assert log.is_up_to_date(3, 2) and log.is_up_to_date(1, 3)
    assert not log.is_up_to_date(2, 2) and not log.is_up_to_date(9, 1)


def test_commit_only_current_term() -> None:
    log = make([1, 1, 2], [])
    assert not log.maybe_commit(2, 2)
    assert log.maybe_commit(3, 2)
    assert log.committed == 3


def test_stable_to_ignores_replaced_entries() -> None:
    log = make([], [1, 1])
    log.accept_in_progress()
    log.append(ents(2, start=2))  # replaces entry 2 while the old one is being persisted
    log.unstable.stable_to(2, 1)  # the old Ready's ack: entry 2 is no longer term 1
    assert log.unstable.offset == 1
    log.unstable.stable_to(2, 2)
    assert log.unstable.offset == 3 and not log.unstable.entries


def test_restore_hides_the_old_log() -> None:
    log = make([1, 1, 1], [])
    snap = Snapshot(metadata=SnapshotMetadata(index=9, term=3, conf_state=ConfState()))
    log.restore(snap)
    assert (log.first_index(), log.last_index(), log.committed) == (10, 9, 9)
    assert log.term(9) == 3
    with pytest.raises(CompactedError):
        log.term(2)
    assert log.committed_to_apply(99) == []  # nothing to apply until the snapshot is in
    log.accept_in_progress()
    log.stable_snap_to(9)
    assert log.applied == 9
