"""Membership change for Multi-Paxos (pure).

Rule (documented for operators in the package docstring): a conf change is a
value chosen in a slot like any other; the new configuration takes effect on a
node when the caller applies that slot (``apply_conf_change``). The leader keeps
at most ONE conf change pending (proposed or chosen, not yet applied by it), and
every change adds or removes one node. Until a pending change is applied, every
quorum must be a majority of the applied configuration AND of the configuration
after each change in the log beyond the applied slot (``quorum.has_quorum`` over
``chain``); a new leader counts the changes its promises reveal too.
"""

from __future__ import annotations

from collections.abc import Iterable

from kvstore.consensus.paxos import value
from kvstore.consensus.types import ConfChange, ConfChangeType, ConfState, Entry, EntryType


def apply_change(cs: ConfState, cc: ConfChange) -> ConfState:
    voters, learners = set(cs.voters), set(cs.learners)
    n = cc.node_id
    if cc.type is ConfChangeType.ADD_NODE:
        learners.discard(n)
        voters.add(n)
    elif cc.type is ConfChangeType.ADD_LEARNER:
        if n not in voters:
            learners.add(n)
    else:
        voters.discard(n)
        learners.discard(n)
    return ConfState(voters=frozenset(voters), learners=frozenset(learners))


def decode(e: Entry) -> ConfChange | None:
    """The conf change a stored entry carries, None if it is not a (valid) one."""
    if e.type is not EntryType.CONF_CHANGE:
        return None
    try:
        return ConfChange.decode(value.payload(e))
    except ValueError:
        return None


def chain(cs: ConfState, pending: Iterable[ConfChange]) -> list[frozenset[int]]:
    """The applied voters, then the voters after each pending change in slot order."""
    out = [cs.voters]
    cur = cs
    for cc in pending:
        cur = apply_change(cur, cc)
        out.append(cur.voters)
    return out


def members(cs: ConfState, pending: Iterable[ConfChange]) -> frozenset[int]:
    """Everyone who should receive the log: voters and learners of every config."""
    out = set(cs.voters) | set(cs.learners)
    cur = cs
    for cc in pending:
        cur = apply_change(cur, cc)
        out |= cur.voters | cur.learners
    return frozenset(out)
