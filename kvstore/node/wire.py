"""Mapping between consensus types and their protobuf form (the only module that does it).

Rule: decoding never trusts the peer. A message that does not map onto the
consensus types (unknown message or entry type, bad conf state) raises
``WireError``; the transport drops it and counts it, it never reaches a core.
"""

from __future__ import annotations

from kvstore._pb import peer_pb2
from kvstore.consensus.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)


class WireError(ValueError):
    """A peer sent something that is not a valid consensus message."""


def conf_state_to_pb(cs: ConfState) -> peer_pb2.ConfState:
    return peer_pb2.ConfState(
        voters=sorted(cs.voters),
        learners=sorted(cs.learners),
        voters_outgoing=sorted(cs.voters_outgoing),
    )


def conf_state_from_pb(pb: peer_pb2.ConfState) -> ConfState:
    voters = frozenset(pb.voters)
    learners = frozenset(pb.learners)
    if voters & learners:
        raise WireError("conf state: voters and learners overlap")
    return ConfState(
        voters=voters, learners=learners, voters_outgoing=frozenset(pb.voters_outgoing)
    )


def snapshot_to_pb(s: Snapshot) -> peer_pb2.Snapshot:
    m = s.metadata
    return peer_pb2.Snapshot(
        metadata=peer_pb2.SnapshotMetadata(
            index=m.index, term=m.term, conf_state=conf_state_to_pb(m.conf_state)
        ),
        data=s.data,
    )


def snapshot_from_pb(pb: peer_pb2.Snapshot) -> Snapshot:
    m = pb.metadata
    return Snapshot(
        metadata=SnapshotMetadata(
            index=m.index, term=m.term, conf_state=conf_state_from_pb(m.conf_state)
        ),
        data=pb.data,
    )


def entry_to_pb(e: Entry) -> peer_pb2.Entry:
    return peer_pb2.Entry(term=e.term, index=e.index, type=int(e.type), data=e.data)


def entry_from_pb(pb: peer_pb2.Entry) -> Entry:
    try:
        kind = EntryType(pb.type)
    except ValueError:
        raise WireError(f"unknown entry type {pb.type}") from None
    return Entry(term=pb.term, index=pb.index, type=kind, data=pb.data)


def message_to_pb(m: Message) -> peer_pb2.RaftMessage:
    pb = peer_pb2.RaftMessage(
        type=int(m.type),
        group=m.group,
        to=m.to,
        term=m.term,
        log_term=m.log_term,
        index=m.index,
        entries=[entry_to_pb(e) for e in m.entries],
        commit=m.commit,
        reject=m.reject,
        reject_hint=m.reject_hint,
        context=m.context,
    )
    # "from" is a Python keyword: set it through setattr.
    setattr(pb, "from", m.from_)
    if m.snapshot is not None:
        pb.snapshot.CopyFrom(snapshot_to_pb(m.snapshot))
    return pb


def message_from_pb(pb: peer_pb2.RaftMessage) -> Message:
    try:
        kind = MessageType(pb.type)
    except ValueError:
        raise WireError(f"unknown message type {pb.type}") from None
    return Message(
        type=kind,
        group=pb.group,
        from_=getattr(pb, "from"),
        to=pb.to,
        term=pb.term,
        log_term=pb.log_term,
        index=pb.index,
        entries=tuple(entry_from_pb(e) for e in pb.entries),
        commit=pb.commit,
        reject=pb.reject,
        reject_hint=pb.reject_hint,
        snapshot=snapshot_from_pb(pb.snapshot) if pb.HasField("snapshot") else None,
        context=pb.context,
    )
