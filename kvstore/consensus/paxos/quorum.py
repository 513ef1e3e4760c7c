"""Majority math over a chain of configurations (performs no I/O).

Rule: a decision (a promise quorum, a chosen slot, a read confirmation) needs a
majority of EVERY configuration in the chain: the applied voters, then each
voter set produced by a conf change that is in the log but not yet applied.
Consecutive configurations differ by one voter, so this is at least as strict as
any single one and a quorum always meets every quorum of the configurations a
lagging node may still be using.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set


def majority(n: int) -> int:
    return n // 2 + 1


def has_quorum(configs: Sequence[frozenset[int]], acks: Set[int]) -> bool:
    """True iff ``acks`` holds a majority of every non-empty config (False if none)."""
    seen = False
    for voters in configs:
        if not voters:
            continue
        seen = True
        if len(voters & acks) < majority(len(voters)):
            return False
    return seen


def quorum_index(configs: Sequence[frozenset[int]], match: Mapping[int, int]) -> int:
    """The highest index a majority of every config has reached (0 if no config)."""
    best: int | None = None
    for voters in configs:
        if not voters:
            continue
        got = sorted((match.get(v, 0) for v in voters), reverse=True)
        idx = got[majority(len(voters)) - 1]
        best = idx if best is None else min(best, idx)
    return best or 0
