"""Membership changes one server at a time (Raft thesis section 4.1); performs no I/O.

Rules kept: each change adds or removes at most one voter, so any two consecutive
configurations share a majority. The leader proposes a change only when no other is
pending and only after an entry of its own term is committed (the fix for the bug
Ongaro posted to raft-dev in 2015; enforced in raft.py). ``validate`` is for proposals
(raises on misuse); ``apply`` is for committed entries and never raises: a change that
no longer makes sense is a no-op.
"""

from __future__ import annotations

from kvstore.consensus.types import ConfChange, ConfChangeType, ConfState, ConsensusError


def validate(cs: ConfState, change: ConfChange) -> None:
    node = change.node_id
    if node <= 0:
        raise ConsensusError(f"conf change for invalid node id {node}")
    if cs.voters_outgoing:
        raise ConsensusError("configuration is joint; single-server changes need a simple one")
    if change.type is ConfChangeType.ADD_NODE and node in cs.voters:
        raise ConsensusError(f"node {node} is already a voter")
    if change.type is ConfChangeType.ADD_LEARNER:
        if node in cs.voters:
            raise ConsensusError(f"node {node} is a voter; demotion is not supported")
        if node in cs.learners:
            raise ConsensusError(f"node {node} is already a learner")
    if change.type is ConfChangeType.REMOVE_NODE:
        if node not in cs.voters and node not in cs.learners:
            raise ConsensusError(f"node {node} is not a member")
        if cs.voters == {node}:
            raise ConsensusError("cannot remove the last voter")


def apply(cs: ConfState, change: ConfChange) -> ConfState:
    try:
        validate(cs, change)
    except ConsensusError:
        return cs
    voters, learners = set(cs.voters), set(cs.learners)
    node = change.node_id
    if change.type is ConfChangeType.ADD_NODE:
        learners.discard(node)
        voters.add(node)
    elif change.type is ConfChangeType.ADD_LEARNER:
        learners.add(node)
    else:
        voters.discard(node)
        learners.discard(node)
    return ConfState(voters=frozenset(voters), learners=frozenset(learners))
