"""Leases in the state machine (statemachine/leases.py), against MemoryKV: grant,
keep-alive, checkpoint and revoke; keys attached by put and cas, detached by writes
without a lease and by deletes; the batch codec of the lease commands."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.statemachine import (
    ApplyError,
    Cas,
    Command,
    Delete,
    LeaseCheckpoint,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRecord,
    LeaseRevoke,
    MemoryKV,
    Put,
    decode_batch,
    encode_batch,
)
from kvstore.statemachine.apply import apply_commands
from kvstore.statemachine.leases import MIN_TTL_MS, check_ttl

U64 = st.integers(0, 2**64 - 1)
LEASE = st.integers(1, 2**63 - 1)


@st.composite
def lease_commands(draw: st.DrawFn) -> Command:
    lease, cid, seq, inc = draw(LEASE), draw(U64), draw(U64), draw(U64)
    kind = draw(st.sampled_from(["grant", "keep", "revoke", "checkpoint", "put", "cas"]))
    if kind == "grant":
        return LeaseGrant(lease, draw(U64), cid, seq, inc)
    if kind == "keep":
        return LeaseKeepAlive(lease, cid, seq, inc)
    if kind == "revoke":
        return LeaseRevoke(lease, cid, seq, inc, draw(st.sampled_from([0, 1, 2**64 - 1])))
    if kind == "checkpoint":
        return LeaseCheckpoint(lease, draw(U64), cid, seq, inc, draw(st.sampled_from([0, 1])))
    key, value = draw(st.binary(max_size=8)), draw(st.binary(max_size=8))
    if kind == "put":
        return Put(key, value, cid, seq, inc, draw(st.sampled_from([0, lease])))
    return Cas(key, value, None, draw(st.integers(0, 3)), cid, seq, inc, lease)


@settings(max_examples=100, deadline=None)
@given(st.lists(lease_commands(), max_size=8), st.integers(0, 2**64 - 1))
def test_lease_commands_round_trip(cmds: list[Command], time_ms: int) -> None:
    assert decode_batch(encode_batch(cmds, time_ms)) == cmds


def run(m: MemoryKV, *cmds: Command) -> list[ApplyError]:
    return [r.error for r in m.apply(m.applied + 1, list(cmds))]


def test_revoke_deletes_the_attached_keys_at_its_revision() -> None:
    m = MemoryKV()
    assert run(m, LeaseGrant(7, 5000)) == [ApplyError.NONE]
    run(m, Put(b"a", b"1", lease=7), Put(b"b", b"1", lease=7), Put(b"c", b"1"))
    assert m.lease_keys[7] == {b"a", b"b"}
    [r] = m.apply(3, [LeaseRevoke(7)])
    assert r.ok and r.revision == 3
    assert sorted(m.data) == [b"c"]
    assert m.leases == {} and m.key_leases == {}
    # Gone for good: a keep-alive, a second revoke and a put with it find nothing.
    assert (
        run(m, LeaseKeepAlive(7), LeaseRevoke(7), Put(b"d", b"1", lease=7))
        == [ApplyError.LEASE_NOT_FOUND] * 3
    )
    assert b"d" not in m.data


def test_a_write_without_the_lease_detaches_the_key() -> None:
    m = MemoryKV()
    run(m, LeaseGrant(1, 5000), LeaseGrant(2, 5000))
    run(m, Put(b"a", b"1", lease=1), Put(b"b", b"1", lease=1), Put(b"c", b"1", lease=1))
    run(m, Put(b"a", b"2"))  # detached: survives the revoke
    run(m, Put(b"b", b"2", lease=2))  # moved to lease 2
    run(m, Delete(b"c"), Put(b"c", b"3"))  # deleted, then written again without a lease
    run(m, LeaseRevoke(1))
    assert sorted(m.data) == [b"a", b"b", b"c"]
    run(m, LeaseRevoke(2))
    assert sorted(m.data) == [b"a", b"c"]


def test_cas_attaches_only_when_it_writes() -> None:
    m = MemoryKV()
    run(m, LeaseGrant(1, 5000), Put(b"lock", b"x"))
    [r] = m.apply(m.applied + 1, [Cas(b"lock", b"me", None, 0, lease=1)])  # exists: fails
    assert not r.ok and m.key_lease(b"lock") == 0
    run(m, Delete(b"lock"))
    [r] = m.apply(m.applied + 1, [Cas(b"lock", b"me", None, 0, lease=1)])
    assert r.ok and m.key_lease(b"lock") == 1
    run(m, LeaseRevoke(1))
    assert b"lock" not in m.data
    assert run(m, Cas(b"lock", b"me", None, 0, lease=1)) == [ApplyError.LEASE_NOT_FOUND]


def test_grant_refuses_an_id_in_use_and_bad_bounds() -> None:
    m = MemoryKV()
    assert run(m, LeaseGrant(1, 5000), LeaseGrant(1, 9000)) == [
        ApplyError.NONE,
        ApplyError.LEASE_EXISTS,
    ]
    assert m.leases[1].ttl_ms == 5000
    assert (
        run(m, LeaseGrant(2, MIN_TTL_MS - 1), LeaseGrant(2**63, 5000))
        == [ApplyError.LEASE_INVALID] * 2
    )
    assert check_ttl(MIN_TTL_MS) is None and check_ttl(0) is not None


def test_keep_alive_resets_and_checkpoints_only_lower_the_remaining_ttl() -> None:
    m = MemoryKV()
    run(m, LeaseGrant(1, 5000))
    assert m.leases[1] == LeaseRecord(5000, 5000, 1)
    run(m, LeaseCheckpoint(1, 3000))
    assert m.leases[1] == LeaseRecord(5000, 3000, 1)
    run(m, LeaseCheckpoint(1, 4000))  # a late or repeated checkpoint never extends
    assert m.leases[1].remaining_ms == 3000
    [r] = m.apply(4, [LeaseKeepAlive(1)])
    assert r.ok and r.ttl_ms == 5000  # the answer carries the TTL
    assert m.leases[1] == LeaseRecord(5000, 5000, 4)


def test_a_retried_grant_gets_its_stored_answer() -> None:
    m = MemoryKV()
    [a] = m.apply(1, [LeaseGrant(9, 5000, client_id=3, seq=1, incarnation=1)])
    [b] = m.apply(2, [LeaseGrant(9, 5000, client_id=3, seq=1, incarnation=1)])
    assert a.ok and b.ok and b.revision == a.revision


def test_frozen_and_foreign_ranges() -> None:
    m = MemoryKV()
    run(m, LeaseGrant(1, 5000), Put(b"a", b"1", lease=1), Put(b"z", b"1", lease=1))
    [r] = apply_commands(m, 9, [LeaseRevoke(1)], frozen=True)
    assert r.error == ApplyError.WRONG_SHARD and 1 in m.leases
    # A revoke deletes only keys the group owns (lease commands are not judged by key).
    [r] = apply_commands(m, 10, [LeaseRevoke(1)], owns=lambda k: k < b"m")
    assert r.ok and sorted(m.data) == [b"z"]


def test_an_expiry_loses_to_a_keep_alive_ordered_before_it() -> None:
    """The leader decided to expire from touched=1 while a keep-alive was already in the
    log ahead of its revoke: the revoke applies as nothing."""
    m = MemoryKV()
    run(m, LeaseGrant(1, 5000), Put(b"a", b"1", lease=1))
    run(m, LeaseKeepAlive(1))  # touched = 2
    [r] = m.apply(3, [LeaseRevoke(1, if_touched=1)])
    assert not r.ok and r.error == ApplyError.NONE and b"a" in m.data
    [r] = m.apply(4, [LeaseRevoke(1, if_touched=2)])
    assert r.ok and b"a" not in m.data
