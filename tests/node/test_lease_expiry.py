"""The leader's lease timers (node/lease_expiry.py LeaderLeases), with time passed in:
a new leader starts leases at their remaining TTL from the log, never earlier; keep-alives
restart them; checkpoints lower what a successor starts from; expiries name the state
they were decided from and are proposed once per retry period."""

from __future__ import annotations

from kvstore.node.lease_expiry import CHECKPOINT_S, RETRY_S, LeaderLeases
from kvstore.statemachine import (
    LeaseCheckpoint,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRecord,
    LeaseRevoke,
    MemoryKV,
)


def records(m: MemoryKV) -> list[tuple[int, LeaseRecord]]:
    return sorted(m.leases.items())


def test_expiry_is_due_at_the_ttl_and_names_the_touched_index() -> None:
    m = MemoryKV()
    m.apply(1, [LeaseGrant(7, 2000)])
    t = LeaderLeases()
    t.sync(term=1, now=100.0, records=records(m))
    assert t.due(101.9) == []
    assert t.due(102.0) == [LeaseRevoke(7, if_touched=1)]
    assert t.due(102.5) == []  # proposed: not again before RETRY_S
    assert t.due(102.0 + RETRY_S) == [LeaseRevoke(7, if_touched=1)]
    m.apply(2, [LeaseRevoke(7, if_touched=1)])
    t.sync(1, 104.0, records(m))
    assert t.deadline == {} and t.due(200.0) == []


def test_keep_alive_restarts_the_timer() -> None:
    m = MemoryKV()
    m.apply(1, [LeaseGrant(7, 2000)])
    t = LeaderLeases()
    t.sync(1, 100.0, records(m))
    m.apply(2, [LeaseKeepAlive(7)])
    t.sync(1, 101.5, records(m))
    assert t.due(103.0) == [] and t.remaining_ms(7, 103.0) == 500
    assert t.due(103.5) == [LeaseRevoke(7, if_touched=2)]


def test_a_new_leader_starts_from_the_remaining_ttl_never_earlier() -> None:
    m = MemoryKV()
    m.apply(1, [LeaseGrant(7, 10_000)])
    old = LeaderLeases()
    old.sync(1, 0.0, records(m))
    # The old leader checkpoints as time passes: at most CHECKPOINT_S apart.
    now = 0.0
    for i in range(2, 7):
        now += CHECKPOINT_S
        old.sync(1, now, records(m))
        for cmd in old.checkpoints(now):
            assert isinstance(cmd, LeaseCheckpoint)
            m.apply(i, [cmd])
    left_at_old = old.remaining_ms(7, now)
    assert left_at_old is not None
    stored = m.leases[7].remaining_ms
    assert left_at_old <= stored < 10_000  # progress was recorded
    # Elected at `later`: the lease gets what the log holds from then on.
    later = now + 0.3
    new = LeaderLeases()
    new.sync(2, later, records(m))
    assert new.remaining_ms(7, later) == stored
    assert new.deadline[7] >= old.deadline[7]  # not before the old leader's expiry
    assert new.due(later + stored / 1000 - 0.001) == []
    assert new.due(later + stored / 1000) == [LeaseRevoke(7, if_touched=1)]


def test_a_term_change_restarts_the_timers_of_the_same_node() -> None:
    m = MemoryKV()
    m.apply(1, [LeaseGrant(7, 2000)])
    t = LeaderLeases()
    t.sync(1, 0.0, records(m))
    assert t.due(2.0)
    t.sync(3, 5.0, records(m))  # lost and won leadership again
    assert t.due(6.9) == [] and t.due(7.0)


def test_checkpoints_only_when_the_remaining_ttl_fell_noticeably() -> None:
    m = MemoryKV()
    m.apply(1, [LeaseGrant(7, 60_000), LeaseGrant(8, 60_000)])
    t = LeaderLeases()
    t.sync(1, 0.0, records(m))
    assert t.checkpoints(0.5) == []  # not yet CHECKPOINT_S
    # The term's first: fell by MIN_STEP_MS (what a successor would otherwise lose).
    assert t.checkpoints(CHECKPOINT_S) == [
        LeaseCheckpoint(7, 59_000, if_touched=1),
        LeaseCheckpoint(8, 59_000, if_touched=1),
    ]
    assert t.checkpoints(2 * CHECKPOINT_S) == []  # fell by less than a fifth of the TTL
    got = t.checkpoints(20.0)
    assert got == [
        LeaseCheckpoint(7, 40_000, if_touched=1),
        LeaseCheckpoint(8, 40_000, if_touched=1),
    ]
    assert t.checkpoints(20.0 + CHECKPOINT_S) == []


def test_a_lease_nobody_renews_runs_out_while_leaders_keep_changing() -> None:
    """Leaders that each led for 2 s (a flapping cluster): every one started the 60 s lease
    from the log's remaining TTL, and none checkpointed (it needed the lease to fall by a
    fifth of its TTL, 12 s), so the lease of a client that had died was kept for as long
    as the flapping went on. Now each records what its term used, and the lease runs
    out after its TTL of leadership time."""
    m = MemoryKV()
    m.apply(1, [LeaseGrant(7, 60_000)])
    index, now, revoked_at = 1, 0.0, None
    for term in range(2, 200):
        t = LeaderLeases()
        for step in range(21):  # 2 s of leadership, looked at every 100 ms
            t.sync(term, now, records(m))
            for cmd in t.due(now) + t.checkpoints(now):
                index += 1
                m.apply(index, [cmd])
                if isinstance(cmd, LeaseRevoke) and 7 not in m.leases:
                    revoked_at = now
            if step < 20:
                now += 0.1
        if revoked_at is not None:
            break
        now += 0.5  # the election
    assert revoked_at is not None, f"still held after {now:.0f} s of leaders changing"
    assert revoked_at >= 60.0  # never before its TTL of leadership time


def test_a_checkpoint_ordered_after_a_keep_alive_does_not_shorten_the_lease() -> None:
    """The leader decided a checkpoint from touched=1 while a keep-alive was already in
    the log ahead of it: the checkpoint must not lower the TTL the keep-alive restored,
    else this leader (and any successor) expires the lease long before its TTL, deleting
    the keys of a client that renewed it a moment ago."""
    m = MemoryKV()
    m.apply(1, [LeaseGrant(7, 10_000)])
    t = LeaderLeases()
    t.sync(1, 0.0, records(m))
    [cp] = t.checkpoints(9.5)  # 500 ms left as this leader sees it
    assert cp.remaining_ms == 500
    m.apply(2, [LeaseKeepAlive(7)])  # proposed by a client before the checkpoint
    m.apply(3, [cp])
    assert m.leases[7].remaining_ms == 10_000
    t.sync(1, 9.6, records(m))
    assert t.due(9.6 + 9.9) == []  # not expired within the TTL after the keep-alive
    successor = LeaderLeases()
    successor.sync(2, 20.0, records(m))
    assert successor.due(29.9) == []
