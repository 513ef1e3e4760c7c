"""Leases in LMDB (storage/leases.py) give MemoryKV's answers, stay out of the session
sweep, and a split leaves each half the attachments of the keys it owns (so a revoke in
one half never deletes the other's keys, and a merge's union is exact)."""

from __future__ import annotations

from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

import kvstore.storage.writer as writer_mod
from kvstore.consensus.types import Entry
from kvstore.shard import Descriptor, Epoch
from kvstore.shard import commands as shard_cmds
from kvstore.statemachine import (
    Cas,
    Command,
    Delete,
    LeaseCheckpoint,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    MemoryKV,
    Put,
    encode_batch,
)
from kvstore.storage import NodeStorage
from kvstore.storage.tables import GroupTables

KEYS = st.sampled_from([b"", b"a", b"b", b"m" * 300, b"\xff" * 510])
LEASES = st.sampled_from([1, 2, 2**63 - 1])
CID = st.sampled_from([0, 1])
SEQ = st.integers(1, 50)
command = st.one_of(
    st.builds(LeaseGrant, LEASES, st.sampled_from([1000, 5000]), CID, SEQ, st.just(1)),
    st.builds(LeaseKeepAlive, LEASES),
    st.builds(LeaseRevoke, LEASES, CID, SEQ, st.just(1)),
    st.builds(LeaseCheckpoint, LEASES, st.integers(0, 6000)),
    st.builds(Put, KEYS, st.binary(max_size=2), CID, SEQ, st.just(1), st.sampled_from([0, 1, 2])),
    st.builds(Delete, KEYS, CID, SEQ, st.just(1)),
    st.builds(
        Cas,
        KEYS,
        st.binary(max_size=1),
        st.none(),
        st.integers(0, 2),
        CID,
        SEQ,
        st.just(1),
        LEASES,
    ),
)


def lease_view(s: NodeStorage, group: int) -> tuple[dict[int, object], dict[int, set[bytes]]]:
    records = dict(s.kv(group).leases())
    return records, {lease: set(s.kv(group).lease_keys(lease)) for lease in records}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(command, min_size=1, max_size=5), min_size=1, max_size=10))
def test_lmdb_leases_match_memory_kv(
    tmp_path_factory: object, batches: list[list[Command]]
) -> None:
    path = tmp_path_factory.mktemp("leases")  # type: ignore[attr-defined]
    model = MemoryKV()
    with (
        NodeStorage(str(path), map_size=16 << 20, sync=False) as s,
        patch.object(writer_mod, "SWEEP_SESSIONS", 1),  # the sweep walks over lease rows
    ):
        for i, cmds in enumerate(batches, start=1):
            e = Entry(term=1, index=i, data=encode_batch(cmds, 1000 + i))
            with s.write() as w:
                w.save(3, entries=[e])
                got = w.apply(3, [e])
            assert got == model.apply(i, cmds, 1000 + i)
            assert lease_view(s, 3) == (
                model.leases,
                {lease: model.lease_keys.get(lease, set()) for lease in model.leases},
            )
            assert s.kv(3).scan() == model.scan(b"")
            with s.env.begin() as txn:
                tables = GroupTables(txn, s.dbs, 3)
                for key in (b"", b"a", b"b", b"m" * 300, b"\xff" * 510):
                    assert tables.key_lease(key) == model.key_lease(key)


def test_split_keeps_each_halfs_attachments(tmp_path: object) -> None:
    P, C = 1, 9
    s = NodeStorage(str(tmp_path), map_size=16 << 20, sync=False)
    s.group(P).bootstrap({1, 2, 3}, Descriptor(id=P, voters=(1, 2, 3)))

    def run(group: int, index: int, data: bytes) -> None:
        e = Entry(term=1, index=index, data=data)
        with s.write() as w:
            w.save(group, entries=[e])
            w.apply(group, [e])

    run(P, 1, encode_batch([LeaseGrant(5, 5000)]))
    run(P, 2, encode_batch([Put(b"apple", b"1", lease=5), Put(b"pear", b"2", lease=5)]))
    run(P, 3, shard_cmds.encode(shard_cmds.Split(C, b"m", Epoch(1, 1))))
    # Both halves hold the lease, each with its own keys.
    assert [lease for lease, _ in s.kv(P).leases()] == [5] == [i for i, _ in s.kv(C).leases()]
    assert s.kv(P).lease_keys(5) == [b"apple"] and s.kv(C).lease_keys(5) == [b"pear"]
    run(C, 4, encode_batch([LeaseRevoke(5)]))
    assert s.kv(P).get(b"apple") is not None and s.kv(C).get(b"pear") is None
    run(P, 4, encode_batch([LeaseRevoke(5)]))
    assert s.kv(P).get(b"apple") is None
    s.close()
