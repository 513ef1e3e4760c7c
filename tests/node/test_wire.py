"""The consensus <-> protobuf mapping round-trips, and junk from peers is a WireError."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

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
from kvstore.node.wire import WireError, message_from_pb, message_to_pb

u64 = st.integers(min_value=0, max_value=2**64 - 1)
ids = st.frozensets(st.integers(min_value=1, max_value=2**64 - 1), max_size=4)

entries = st.builds(
    Entry,
    term=u64,
    index=u64,
    type=st.sampled_from(EntryType),
    data=st.binary(max_size=64),
)
snapshots = st.builds(
    Snapshot,
    metadata=st.builds(
        SnapshotMetadata,
        index=u64,
        term=u64,
        conf_state=st.builds(ConfState, voters=ids, voters_outgoing=ids),
    ),
    data=st.binary(max_size=64),
)
messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    group=u64,
    from_=u64,
    to=u64,
    term=u64,
    log_term=u64,
    index=u64,
    entries=st.lists(entries, max_size=3).map(tuple),
    commit=u64,
    reject=st.booleans(),
    reject_hint=u64,
    snapshot=st.none() | snapshots,
    context=st.binary(max_size=16),
)


@given(messages)
def test_message_round_trips_through_protobuf(m: Message) -> None:
    pb = message_to_pb(m)
    again = peer_pb2.RaftMessage.FromString(pb.SerializeToString())
    assert message_from_pb(again) == m


def test_unknown_types_are_wire_errors() -> None:
    pb = peer_pb2.RaftMessage(type=999, group=1)
    try:
        message_from_pb(pb)
    except WireError as e:
        assert "message type 999" in str(e)
    else:
        raise AssertionError("no WireError")
    pb = peer_pb2.RaftMessage(type=int(MessageType.APPEND), entries=[peer_pb2.Entry(type=77)])
    try:
        message_from_pb(pb)
    except WireError as e:
        assert "entry type 77" in str(e)
    else:
        raise AssertionError("no WireError")


def test_overlapping_voters_and_learners_are_a_wire_error() -> None:
    pb = peer_pb2.RaftMessage(type=int(MessageType.SNAPSHOT))
    pb.snapshot.metadata.conf_state.voters.append(1)
    pb.snapshot.metadata.conf_state.learners.append(1)
    try:
        message_from_pb(pb)
    except WireError:
        pass
    else:
        raise AssertionError("no WireError")
