"""Member addresses are stored with the membership, survive a reopen and travel in the
snapshot image (a replica that missed the conf change learns them from the snapshot)."""

from __future__ import annotations

from pathlib import Path

from kvstore.consensus.types import ConfState, Entry
from kvstore.statemachine import Put, encode_batch
from kvstore.storage import NodeStorage


def test_addresses_survive_reopen_and_ride_in_snapshots(tmp_path: Path) -> None:
    a = NodeStorage(str(tmp_path / "a"), map_size=64 << 20)
    e = Entry(term=1, index=1, data=encode_batch([Put(b"k", b"v")]))
    with a.write() as w:
        w.save(1, entries=[e])
        w.apply(1, [e])
        w.set_conf_state(1, ConfState(voters=frozenset({1, 2, 3}), learners=frozenset({4, 5})))
        w.set_member_address(1, 4, "10.0.0.4:7001")
        w.set_member_address(1, 5, "10.0.0.5:7001")
    with a.write() as w:
        w.set_member_address(1, 5, "")  # removed
    assert a.group(1).member_addresses() == {4: "10.0.0.4:7001"}
    snap = a.group(1).snapshot()
    a.close()
    a = NodeStorage(str(tmp_path / "a"), map_size=64 << 20)
    assert a.group(1).member_addresses() == {4: "10.0.0.4:7001"}
    a.close()

    b = NodeStorage(str(tmp_path / "b"), map_size=64 << 20)
    with b.write() as w:
        w.set_member_address(1, 9, "stale:1")
        w.save(1, snapshot=snap)
    assert b.group(1).member_addresses() == {4: "10.0.0.4:7001"}
    assert b.kv(1).get(b"k") is not None
    b.close()
