"""Membership changes (Raft thesis chapter 4); performs no I/O.

Two ways to change the voters, as in etcd-io/raft:
- one server at a time (thesis 4.1): a single change adds or removes at most one voter,
  so any two consecutive configurations share a majority;
- joint consensus (thesis 4.3): a JOINT change enters C_old,new, where every decision
  (commit, election, CheckQuorum) needs a majority of BOTH halves; once it is applied the
  leader proposes LEAVE_JOINT itself (etcd's auto-leave) and C_new alone rules.
A voter demoted to a learner inside a joint change stays in the outgoing half until the
configuration is left (ConfState keeps it in ``voters_outgoing`` and ``learners``).

The leader proposes a change only when no other is pending and only after an entry of its
own term is committed (the fix for the bug Ongaro posted to raft-dev in 2015; enforced in
raft.py). ``validate`` is for proposals (raises on misuse); ``apply`` is for committed
entries and never raises: a change that no longer makes sense is a no-op.
"""

from __future__ import annotations

from kvstore.consensus.types import ConfChange, ConfChangeType, ConfState, ConsensusError

T = ConfChangeType


def _single(voters: set[int], learners: set[int], change: ConfChange) -> None:
    """Apply one change to the (incoming) voters and learners, in place; raises when it
    makes no sense there."""
    node = change.node_id
    if node <= 0:
        raise ConsensusError(f"conf change for invalid node id {node}")
    if change.type is T.ADD_NODE:
        if node in voters:
            raise ConsensusError(f"node {node} is already a voter")
        learners.discard(node)
        voters.add(node)
    elif change.type is T.ADD_LEARNER:
        if node in learners:
            raise ConsensusError(f"node {node} is already a learner")
        if voters == {node}:
            raise ConsensusError("cannot demote the last voter")
        voters.discard(node)
        learners.add(node)
    elif change.type is T.REMOVE_NODE:
        if node not in voters and node not in learners:
            raise ConsensusError(f"node {node} is not a member")
        if voters == {node}:
            raise ConsensusError("cannot remove the last voter")
        voters.discard(node)
        learners.discard(node)
    else:
        raise ConsensusError(f"{change.type.name} is not a single change")


def _next(cs: ConfState, change: ConfChange) -> ConfState:
    if change.type is T.LEAVE_JOINT:
        if not cs.voters_outgoing:
            raise ConsensusError("configuration is not joint: nothing to leave")
        return ConfState(voters=cs.voters, learners=cs.learners)
    if cs.voters_outgoing:
        raise ConsensusError("configuration is joint: wait until it is left")
    voters, learners = set(cs.voters), set(cs.learners)
    if change.type is T.JOINT:
        if not change.changes:
            raise ConsensusError("a joint conf change needs at least one change")
        for part in change.changes:
            _single(voters, learners, part)
        return ConfState(
            voters=frozenset(voters), learners=frozenset(learners), voters_outgoing=cs.voters
        )
    _single(voters, learners, change)
    return ConfState(voters=frozenset(voters), learners=frozenset(learners))


def validate(cs: ConfState, change: ConfChange) -> None:
    _next(cs, change)


def apply(cs: ConfState, change: ConfChange) -> ConfState:
    try:
        return _next(cs, change)
    except ConsensusError:
        return cs
