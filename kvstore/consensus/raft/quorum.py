"""Quorum math for majority and joint configurations (performs no I/O).

Rule kept here: a joint configuration (C_old,new) decides only what BOTH of its
majorities decide (Raft thesis section 4.3). An empty majority config places no
constraint: it commits everything and wins every vote, so a joint config with an
empty outgoing half behaves exactly like its incoming half.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Set

NO_LIMIT = (1 << 63) - 1
"""Commit index of an empty config: imposes no limit in a ``min``."""


class VoteResult(enum.Enum):
    PENDING = "pending"
    LOST = "lost"
    WON = "won"


def majority_committed(voters: Set[int], match: Mapping[int, int]) -> int:
    """Largest index acknowledged by a majority of ``voters`` (missing voters count as 0)."""
    if not voters:
        return NO_LIMIT
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    return acked[len(acked) // 2]


def joint_committed(incoming: Set[int], outgoing: Set[int], match: Mapping[int, int]) -> int:
    return min(majority_committed(incoming, match), majority_committed(outgoing, match))


def majority_vote(voters: Set[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON with a majority of grants, LOST once a majority can no longer be reached."""
    if not voters:
        return VoteResult.WON
    granted = rejected = 0
    for v in voters:
        got = votes.get(v)
        if got is True:
            granted += 1
        elif got is False:
            rejected += 1
    quorum = len(voters) // 2 + 1
    if granted >= quorum:
        return VoteResult.WON
    if len(voters) - rejected >= quorum:
        return VoteResult.PENDING
    return VoteResult.LOST


def joint_vote(incoming: Set[int], outgoing: Set[int], votes: Mapping[int, bool]) -> VoteResult:
    r1 = majority_vote(incoming, votes)
    r2 = majority_vote(outgoing, votes)
    if r1 == r2:
        return r1
    if VoteResult.LOST in (r1, r2):
        return VoteResult.LOST
    return VoteResult.PENDING
