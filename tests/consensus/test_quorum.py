"""Quorum math held against naive definitions (hypothesis), as etcd-io/raft's quickcheck does."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from kvstore.consensus.raft.quorum import (
    NO_LIMIT,
    VoteResult,
    joint_committed,
    joint_vote,
    majority_committed,
    majority_vote,
)

ids = st.frozensets(st.integers(1, 9), max_size=7)
matches = st.dictionaries(st.integers(1, 9), st.integers(0, 20), max_size=9)
votes = st.dictionaries(st.integers(1, 9), st.booleans(), max_size=9)


def naive_committed(voters: frozenset[int], match: dict[int, int]) -> int:
    """The largest index that more than half of the voters have reached."""
    if not voters:
        return NO_LIMIT
    best = 0
    for idx in range(0, 21):
        if sum(1 for v in voters if match.get(v, 0) >= idx) * 2 > len(voters):
            best = idx
    return best


def naive_vote(voters: frozenset[int], v: dict[int, bool]) -> VoteResult:
    """Won if granted votes are a majority; lost if no way of filling in the missing
    votes reaches a majority; pending otherwise (by trying every completion)."""
    if not voters:
        return VoteResult.WON
    missing = [x for x in voters if x not in v]
    outcomes = set()
    for fill in itertools.product([True, False], repeat=len(missing)):
        full = {**{x: v[x] for x in voters if x in v}, **dict(zip(missing, fill, strict=True))}
        outcomes.add(sum(full.values()) * 2 > len(voters))
    if outcomes == {True}:
        return VoteResult.WON
    if outcomes == {False}:
        return VoteResult.LOST
    return VoteResult.PENDING


@given(ids, matches)
def test_majority_committed_matches_naive(voters: frozenset[int], match: dict[int, int]) -> None:
    assert majority_committed(voters, match) == naive_committed(voters, match)


@given(ids, ids, matches)
def test_joint_committed_is_min_of_halves(
    a: frozenset[int], b: frozenset[int], match: dict[int, int]
) -> None:
    got = joint_committed(a, b, match)
    assert got == min(naive_committed(a, match), naive_committed(b, match))
    # A joint config with an empty outgoing half is the incoming config.
    assert joint_committed(a, frozenset(), match) == majority_committed(a, match)


@given(ids, votes)
def test_majority_vote_matches_naive(voters: frozenset[int], v: dict[int, bool]) -> None:
    assert majority_vote(voters, v) == naive_vote(voters, v)


@given(ids, ids, votes)
def test_joint_vote_needs_both(a: frozenset[int], b: frozenset[int], v: dict[int, bool]) -> None:
    got = joint_vote(a, b, v)
    ra, rb = naive_vote(a, v), naive_vote(b, v)
    if ra is VoteResult.WON and rb is VoteResult.WON:
        assert got is VoteResult.WON
    elif VoteResult.LOST in (ra, rb):
        assert got is VoteResult.LOST
    else:
        assert got is VoteResult.PENDING


def test_examples() -> None:
    assert majority_committed(frozenset({1, 2, 3}), {1: 5, 2: 4, 3: 1}) == 4
    assert majority_committed(frozenset({1, 2, 3, 4}), {1: 5, 2: 4, 3: 3, 4: 1}) == 3
    assert majority_vote(frozenset({1, 2, 3}), {1: True}) is VoteResult.PENDING
    assert majority_vote(frozenset({1, 2, 3}), {1: True, 2: False, 3: False}) is VoteResult.LOST
