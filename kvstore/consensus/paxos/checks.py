"""Validation of remote messages for the Paxos core (pure).

Rule: a message from another node is never trusted to be well formed. Each check
returns the reason to drop it (a key of ``PaxosNode.dropped``) or None; the core
never raises for a remote message.
"""

from __future__ import annotations

from kvstore.consensus.paxos import ballot as ballots
from kvstore.consensus.paxos.recovery import Promise
from kvstore.consensus.types import Entry, Message, MessageType, has_membership

MT = MessageType
REACCEPT = b"reaccept"  # leading.REACCEPT (kept here to avoid an import cycle)

_LED_BY_SENDER = {MT.PREPARE, MT.ACCEPT, MT.PAXOS_HEARTBEAT, MT.PAXOS_TIMEOUT_NOW}
"""Messages a proposer sends in its own ballot: the ballot's owner is the sender."""

_BALLOTED = _LED_BY_SENDER | {
    MT.PROMISE,
    MT.ACCEPTED,
    MT.PAXOS_HEARTBEAT_RESP,
    MT.PAXOS_SNAPSHOT,
}


def envelope(m: Message, group: int, me: int) -> str | None:
    if m.group != group:
        return "foreign_group"
    if m.to != me:
        return "wrong_recipient"
    if m.from_ < 1 or m.from_ == me:
        return "malformed"
    return None


def _contiguous(entries: tuple[Entry, ...], first: int, max_term: int) -> bool:
    for i, e in enumerate(entries):
        if e.index != first + i or not 0 <= e.term <= max_term:
            return False
    return True


def body(m: Message, me: int) -> str | None:
    if min(m.term, m.index, m.commit, m.reject_hint, m.log_term) < 0:
        return "malformed"
    if m.type in _BALLOTED and not ballots.is_valid(m.term):
        return "malformed"
    if m.type in _LED_BY_SENDER and ballots.node_of(m.term) != m.from_:
        return "malformed"
    if m.type is MT.ACCEPT and not _contiguous(m.entries, m.index + 1, m.term):
        return "malformed"
    if m.type is MT.ACCEPT and m.context == REACCEPT and (m.entries or m.log_term <= m.index):
        return "malformed"
    if m.type is MT.PROMISE and not m.reject:
        if ballots.node_of(m.term) != me or m.index < 1:
            return "malformed"
        first = m.entries[0].index if m.entries else m.index
        # Entries start at the prepared slot, or later only where the promiser
        # compacted chosen slots (first <= its commit + 1).
        if first < m.index or (first > m.index and first > m.commit + 1):
            return "malformed"
        if m.entries and not _contiguous(m.entries, m.entries[0].index, m.term):
            return "malformed"
    if m.type is MT.PAXOS_SNAPSHOT:
        if ballots.node_of(m.term) not in (m.from_, me):
            return "malformed"
        if m.snapshot is None or m.snapshot.metadata.index < 0:
            return "malformed"
        if m.snapshot.metadata.index == 0 and not has_membership(m.snapshot.metadata.conf_state):
            return "malformed"  # at index 0 a snapshot is only its membership (the join contract)
    return None


def promise_of(m: Message) -> Promise:
    return Promise(commit=m.commit, entries=m.entries)
