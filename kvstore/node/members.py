"""Member addresses travel with the membership: a conf change carries the address of the
node it adds (``ConfChange.context``), every replica records it when the change applies
(in the same transaction as the new membership) and a snapshot image carries the whole
address book. So every member learns a new member's address, and learns it again on a
restart, without anyone editing ``--peers``.

Rule: an address is recorded only when the change took effect (the node is a member
after it), and forgotten when the node is removed.
"""

from __future__ import annotations

from kvstore.consensus.types import ConfChange, ConfChangeType, ConfState


def with_address(change: ConfChange, address: str) -> ConfChange:
    return ConfChange(type=change.type, node_id=change.node_id, context=address.encode())


def address_change(change: ConfChange, after: ConfState) -> str | None:
    """What to record for ``change.node_id`` once ``change`` applied as ``after``: its
    address, "" to forget it (removed), None for nothing (no address, or a no-op)."""
    # An outgoing voter of a joint configuration is still a member (it votes until the
    # configuration is left), so its address stays.
    member = change.node_id in after.voters | after.learners | after.voters_outgoing
    if change.type is ConfChangeType.REMOVE_NODE:
        return None if member else ""
    if not member or not change.context:
        return None
    try:
        address = change.context.decode()
    except UnicodeDecodeError:
        return None
    host, _, port = address.rpartition(":")
    return address if host and port.isdigit() else None
