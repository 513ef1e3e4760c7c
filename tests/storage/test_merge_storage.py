"""Merge applied in the groups' logs (docs/sharding.md, "Merge"): PrepareMerge freezes
the source, CommitMerge makes the target absorb it in one transaction (range, version,
revision offset, sessions, source state destroyed, user keys kept), RollbackMerge
unfreezes the source one version up; refused commands change nothing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kvstore.consensus.types import ConfState, Entry, EntryType, HardState, Ready
from kvstore.node.metrics import NodeMetrics
from kvstore.node.persist import Plan, ShardChanges, persist_plans
from kvstore.shard import Descriptor, Epoch
from kvstore.shard import commands as cmds
from kvstore.statemachine import ApplyError, ApplyResult, Put, encode_batch
from kvstore.storage import NodeStorage
from kvstore.storage.snapshot import read_image

L, R = 1, 2
VOTERS = (1, 2, 3)


def entry(index: int, data: bytes, term: int = 1) -> Entry:
    return Entry(term=term, index=index, type=EntryType.NORMAL, data=data)


def run(st: NodeStorage, group: int, *ents: Entry) -> tuple[list[ApplyResult], dict[int, int]]:
    with st.write() as w:
        w.save(group, entries=list(ents))
        out = list(w.apply(group, list(ents)))
        return out, w.admin_results.get(group, {})


def puts(*kvs: tuple[bytes, bytes, int]) -> bytes:
    """Puts of (key, value, seq) in client 5's session."""
    return encode_batch([Put(k, v, 5, seq, 1) for k, v, seq in kvs])


@pytest.fixture
def st(tmp_path: object) -> NodeStorage:
    """Two adjacent shards on the same nodes: L = [b"", b"m"), R = [b"m", +inf)."""
    s = NodeStorage(str(tmp_path), map_size=16 << 20, sync=False)
    s.group(L).bootstrap(set(VOTERS), Descriptor(id=L, end=b"m", voters=VOTERS))
    s.group(R).bootstrap(set(VOTERS), Descriptor(id=R, start=b"m", voters=VOTERS))
    return s


def prepare(st: NodeStorage, index: int) -> Descriptor:
    src = st.group(R).view.shard
    tgt = st.group(L).view.shard
    assert src is not None and tgt is not None
    c = cmds.PrepareMerge(L, src.epoch, tgt.epoch)
    _, res = run(st, R, entry(index, cmds.encode(c)))
    assert res == {index: index}
    d = st.group(R).view.shard
    assert d is not None and (d.merging_into, d.merge_index) == (L, index)
    return d


def test_merge_absorbs_the_source_in_one_transaction(st: NodeStorage) -> None:
    run(st, L, entry(1, puts((b"apple", b"1", 1))))
    # R's log runs far ahead of L's: its revisions are higher than L's next index.
    for i in range(1, 9):
        run(st, R, entry(i, puts((b"pear", b"%d" % i, 1 + i))))
    src = prepare(st, 9)
    # A write that reaches the frozen source applies as nothing (a stale route the client
    # retries on the target), and a retry of an applied write still gets its answer.
    late, _ = run(st, R, entry(10, puts((b"plum", b"x", 20), (b"pear", b"8", 9))))
    assert late[0].error == ApplyError.WRONG_SHARD
    assert late[1].ok and late[1].revision == 8
    assert st.kv(R).get(b"plum") is None

    _, res = run(st, L, entry(2, cmds.encode(cmds.CommitMerge(src))))
    merged = st.group(L).view.shard
    assert merged is not None and res == {2: merged.epoch.version}
    assert (merged.start, merged.end, merged.epoch) == (b"", b"", Epoch(2, 1))
    assert merged.merging_into == 0
    # The source replica is gone (log, metadata, sessions), its keys now belong to L.
    assert R not in st.groups() and st.group(R).view.shard is None
    assert [kv.key for kv in st.kv(L).scan()] == [b"apple", b"pear"]
    pear = st.kv(L).get(b"pear")
    assert pear is not None and pear.mod_revision == 8
    # Revisions keep rising for every key, and the retry of a write the source applied
    # finds its answer in the merged session table.
    out, _ = run(
        st, L, entry(3, puts((b"pear", b"9", 30), (b"pear", b"8", 9), (b"apple", b"2", 1)))
    )
    assert out[0].ok and out[0].revision > 8
    assert out[1].revision == 8  # the stored answer, not applied again
    assert out[2].revision == 1  # L's own session record survived the merge
    assert st.kv(L).get(b"pear").value == b"9"  # type: ignore[union-attr]
    # A snapshot of the merged shard carries the offset (a new replica keeps rising too).
    image = read_image(L, 3, st.group(L).snapshot().data)
    assert [k for k, _ in image.kv] == [b"apple", b"pear"]


def test_source_ready_in_the_persist_that_merges_it_away(st: NodeStorage) -> None:
    """One persist holds the target's CommitMerge and, after it (the driver persists its
    groups in the order it made them, a split's right half last), a Ready of the source
    (a late write reaching the frozen source). The source's state is gone by then: its
    Ready must change nothing; it made the transaction fail ("gap, appending 10 after 0")
    and so stopped the node's driver (found by the sharded simulation, FINDINGS.md F8)."""
    run(st, R, entry(1, puts((b"pear", b"1", 1))))
    src = prepare(st, 2)
    commit = entry(1, cmds.encode(cmds.CommitMerge(src)))
    late = entry(3, puts((b"plum", b"x", 2)))
    plans = [
        Plan(group=L, rd=Ready(entries=(commit,), committed=(commit,)), compact_to=0),
        Plan(
            group=R,
            rd=Ready(hard_state=HardState(term=1, commit=3), entries=(late,), committed=(late,)),
            compact_to=0,
            conf_state=ConfState(voters=frozenset(VOTERS)),
        ),
    ]
    shards = ShardChanges()
    results = persist_plans(st, NodeMetrics(), plans, shards)
    assert shards.merged == [(L, R)] and results.get(R, []) == []
    # Nothing left but the tombstone, which holds the source's hard state of this persist
    # (its messages leave after it: tombstone.py).
    assert R not in st.groups()
    assert st.group(R).view == replace(st.group(99).view, hard_state=HardState(term=1))
    merged = st.group(L).view.shard
    assert merged is not None and (merged.start, merged.end) == (b"", b"")
    assert [kv.key for kv in st.kv(L).scan()] == [b"pear"]


def test_commit_is_refused_when_the_target_changed(st: NodeStorage) -> None:
    src = prepare(st, 1)
    split = cmds.encode(cmds.Split(7, b"c", Epoch(1, 1)))
    _, res = run(st, L, entry(1, split))
    assert res == {1: 7}
    _, res = run(st, L, entry(2, cmds.encode(cmds.CommitMerge(src))))
    assert res == {2: 0}
    assert st.group(R).view.shard == src  # the source is untouched (still frozen)
    # Once refused, always refused: a rollback is now safe, one version up.
    _, res = run(st, R, entry(2, cmds.encode(cmds.RollbackMerge(src.epoch))))
    back = st.group(R).view.shard
    assert back is not None and res == {2: 2} and back.epoch == Epoch(2, 1)
    assert back.merging_into == 0
    out, _ = run(st, R, entry(3, puts((b"plum", b"1", 1))))
    assert out[0].ok  # writable again
    # The old prepare can never be committed: the target epoch it names is gone.
    _, res = run(st, L, entry(3, cmds.encode(cmds.CommitMerge(src))))
    assert res == {3: 0}


def test_prepare_refused_on_a_stale_epoch_or_twice(st: NodeStorage) -> None:
    bad = cmds.PrepareMerge(L, Epoch(5, 1), Epoch(1, 1))
    _, res = run(st, R, entry(1, cmds.encode(bad)))
    assert res == {1: 0} and st.group(R).view.shard == Descriptor(id=R, start=b"m", voters=VOTERS)
    prepare(st, 2)
    again = cmds.PrepareMerge(3, Epoch(1, 1), Epoch(1, 1))
    _, res = run(st, R, entry(3, cmds.encode(again)))
    assert res == {3: 0}
    d = st.group(R).view.shard
    assert d is not None and d.merging_into == L
    # A frozen source does not split either (its epoch still matches).
    _, res = run(st, R, entry(4, cmds.encode(cmds.Split(9, b"x", Epoch(1, 1)))))
    assert res == {4: 0}


def test_commit_of_an_unprepared_source_is_refused(st: NodeStorage) -> None:
    src = st.group(R).view.shard
    assert src is not None
    _, res = run(st, L, entry(1, cmds.encode(cmds.CommitMerge(src))))
    assert res == {1: 0}
    assert R in st.groups()


def test_rollback_needs_a_prepared_merge(st: NodeStorage) -> None:
    _, res = run(st, R, entry(1, cmds.encode(cmds.RollbackMerge(Epoch(1, 1)))))
    assert res == {1: 0}
    assert st.group(R).view.shard == Descriptor(id=R, start=b"m", voters=VOTERS)


def test_a_lagging_target_installs_the_merged_snapshot_and_drops_its_frozen_source(
    st: NodeStorage, tmp_path: object
) -> None:
    """A replica whose target lagged past the CommitMerge (and was compacted away) gets a
    snapshot of the merged shard: the install destroys the local frozen source in the
    same transaction (TiKV #7002), and the image holds the source's keys."""
    from kvstore.consensus.types import Snapshot

    lag = NodeStorage(str(tmp_path) + "-lag", map_size=16 << 20, sync=False)
    try:
        for s in (st, lag):
            s.group(L).bootstrap(set(VOTERS), Descriptor(id=L, end=b"m", voters=VOTERS))
            s.group(R).bootstrap(set(VOTERS), Descriptor(id=R, start=b"m", voters=VOTERS))
            run(s, R, entry(1, puts((b"pear", b"1", 1))))
            prepare(s, 2)
        src = st.group(R).view.shard
        assert src is not None and lag.group(R).view.shard == src
        run(st, L, entry(1, cmds.encode(cmds.CommitMerge(src))))
        run(st, L, entry(2, puts((b"plum", b"2", 2))))
        snap = st.group(L).snapshot()
        with lag.write() as w:
            w.save(L, snapshot=Snapshot(metadata=snap.metadata, data=snap.data))
            assert w.merged == [(L, R)]
        assert lag.group(L).view.shard == st.group(L).view.shard
        assert R not in lag.groups()
        assert [kv.key for kv in lag.kv(L).scan()] == [b"pear", b"plum"]
    finally:
        lag.close()


def test_a_fence_makes_every_later_commit_refused_then_rollback_is_safe(
    st: NodeStorage,
) -> None:
    """Two coordinators of one merge: the one giving up fences the target first. A
    CommitMerge ordered after the fence is refused; the source rolls back."""
    src = prepare(st, 1)
    _, res = run(st, L, entry(1, cmds.encode(cmds.FenceMerge(R))))
    fenced = st.group(L).view.shard
    assert fenced is not None and res == {1: 2} and fenced.epoch == Epoch(2, 1)
    assert (fenced.start, fenced.end) == (b"", b"m")  # nothing but the version changed
    _, res = run(st, L, entry(2, cmds.encode(cmds.CommitMerge(src))))
    assert res == {2: 0} and R in st.groups()
    _, res = run(st, R, entry(2, cmds.encode(cmds.RollbackMerge(src.epoch))))
    assert res == {2: 2}
    assert cmds.decode(cmds.encode(cmds.FenceMerge(R))) == cmds.FenceMerge(R)


def test_replicas_that_merged_at_different_points_of_the_frozen_source_agree(
    tmp_path: object,
) -> None:
    """Two target replicas apply the CommitMerge while their source replicas stand at
    different entries after the PrepareMerge (the coordinator only waits for L): here one
    source applied an empty stamped entry (a causal read's TIME_REQUEST) from a leader
    whose wall clock ran ahead. The source's log clock and session table must stay as
    they were at L: the merge took the later clock, so the first replica found client 5's
    session expired and applied its retry again while the other answered it from the
    session (replicas diverged, and a write applied twice)."""
    from kvstore.statemachine.apply import SESSION_IDLE_MS

    def replica(name: str, late_entry: bool) -> NodeStorage:
        s = NodeStorage(f"{tmp_path}/{name}", map_size=16 << 20, sync=False)
        s.group(L).bootstrap(set(VOTERS), Descriptor(id=L, end=b"m", voters=VOTERS))
        s.group(R).bootstrap(set(VOTERS), Descriptor(id=R, start=b"m", voters=VOTERS))
        run(s, L, entry(1, encode_batch([Put(b"apple", b"1", 5, 1, 1)], 1_000)))
        run(s, R, entry(1, encode_batch([Put(b"pear", b"1", 5, 1, 2)], 1_000)))
        src = prepare(s, 2)
        if late_entry:
            run(s, R, entry(3, encode_batch([], 1_000 + SESSION_IDLE_MS + 1)))
        run(s, L, entry(2, cmds.encode(cmds.CommitMerge(src))))
        return s

    answers, values = [], []
    for name, late in (("x", True), ("y", False)):
        s = replica(name, late)
        # Client 5 retries seq 1 a few seconds later (by the target leader's clock).
        out, _ = run(s, L, entry(3, encode_batch([Put(b"apple", b"2", 5, 1, 1)], 4_000)))
        answers.append((out[0].ok, out[0].revision))
        values.append(s.kv(L).get(b"apple"))
    assert answers[0] == answers[1] == (True, 1), "the retry is answered, not applied again"
    assert values[0] == values[1]


def test_a_session_expired_on_either_side_still_refuses_its_retries_after_a_merge(
    st: NodeStorage,
) -> None:
    """An expired session refuses its writes (SESSION_EXPIRED): its outcomes are gone, so
    a retry of a write it applied must not apply again. The merge counted an expired
    session of either side as absent (source) or dropped it for the other side's
    (target), and the retry after the merge applied a second time."""
    from kvstore.statemachine.apply import SESSION_IDLE_MS

    late = 1_000 + SESSION_IDLE_MS + 10
    # Client 5 (incarnation 1) wrote to L long ago, and lately to R; client 6
    # (incarnation 2) wrote to R long ago. Other clients' writes move both log clocks.
    run(st, L, entry(1, encode_batch([Put(b"apple", b"1", 5, 1, 1)], 1_000)))
    run(st, R, entry(1, encode_batch([Put(b"pear", b"1", 6, 1, 2)], 1_000)))
    run(st, R, entry(2, encode_batch([Put(b"plum", b"1", 5, 2, 1)], late)))
    run(st, L, entry(2, encode_batch([Put(b"fig", b"1", 7, 1, 1)], late)))
    # Before the merge both retries are refused.
    out, _ = run(st, R, entry(3, encode_batch([Put(b"pear", b"1", 6, 1, 2)], late + 1)))
    assert out[0].error == ApplyError.SESSION_EXPIRED
    out, _ = run(st, L, entry(3, encode_batch([Put(b"apple", b"1", 5, 1, 1)], late + 1)))
    assert out[0].error == ApplyError.SESSION_EXPIRED
    src = prepare(st, 4)
    run(st, L, entry(4, cmds.encode(cmds.CommitMerge(src))))
    retries = encode_batch(
        [Put(b"pear", b"1", 6, 1, 2), Put(b"apple", b"1", 5, 1, 1), Put(b"plum", b"1", 5, 2, 1)],
        late + 2,
    )
    out, _ = run(st, L, entry(5, retries))
    assert [r.error for r in out[:2]] == [ApplyError.SESSION_EXPIRED] * 2
    assert out[2].ok and out[2].revision == 2  # client 5's live session answers from R's
    assert st.kv(L).get(b"pear").mod_revision == 1  # type: ignore[union-attr]
    assert st.kv(L).get(b"apple").mod_revision == 1  # type: ignore[union-attr]
    # New writes of both sessions still apply.
    out, _ = run(st, L, entry(6, encode_batch([Put(b"kiwi", b"1", 5, 3, 1)], late + 3)))
    assert out[0].ok


@pytest.mark.parametrize("ahead", [L, R])
def test_live_sessions_stay_live_across_a_merge_of_groups_whose_clocks_drifted(
    st: NodeStorage, ahead: int
) -> None:
    """Log time counts each group's leaders' monotonic time (kvstore/node/logclock.py),
    so two groups' clocks drift apart by the idle time each lost across leader changes,
    here two hours. The merge took the later clock: the other side's sessions, written
    a moment before, looked two hours idle, were forgotten, and a retry of a write that
    had applied applied again."""
    from kvstore.statemachine.apply import SESSION_FORGET_MS

    t = {L: 1_000, R: 1_000}
    t[ahead] += 2 * SESSION_FORGET_MS
    run(st, L, entry(1, encode_batch([Put(b"apple", b"1", 5, 1, 1)], t[L])))
    run(st, R, entry(1, encode_batch([Put(b"pear", b"1", 6, 1, 2)], t[R])))
    src = prepare(st, 2)
    run(st, L, entry(2, encode_batch([], t[L] + 500)))
    run(st, L, entry(3, cmds.encode(cmds.CommitMerge(src))))
    retries = encode_batch(
        [Put(b"apple", b"1", 5, 1, 1), Put(b"pear", b"1", 6, 1, 2)], t[L] + 1_000
    )
    out, _ = run(st, L, entry(4, retries))
    assert [(r.ok, r.revision) for r in out] == [(True, 1), (True, 1)], "answered, not applied"
    assert st.kv(L).log_time() == t[L] + 1_000  # the target's clock goes on


def test_a_lease_one_side_no_longer_holds_expires_after_the_merge(st: NodeStorage) -> None:
    """On a sharded cluster a lease is alive only while every shard holds it (the client
    grants, renews and revokes it in each; docs/leases.md). Here L's leader expired lease
    9 while R, frozen for the merge, could not: the merge took R's record into L and the
    lease came back to life with R's keys (a put with it succeeded, its keys stayed, and
    keep-alives renewed it). A lease only one side holds now comes in run out (remaining
    0, touched at the merge): the target's leader revokes it at once, deleting its keys
    through the log as any expiry does."""
    from kvstore.node.lease_expiry import LeaderLeases
    from kvstore.statemachine import LeaseGrant, LeaseRevoke

    run(st, L, entry(1, encode_batch([LeaseGrant(9, 10_000), LeaseGrant(4, 10_000)])))
    run(st, R, entry(1, encode_batch([LeaseGrant(9, 10_000), LeaseGrant(4, 10_000)])))
    run(st, L, entry(2, encode_batch([Put(b"apple", b"1", lease=4)])))
    run(st, R, entry(2, encode_batch([Put(b"pear", b"1", lease=9), Put(b"plum", b"1", lease=4)])))
    run(st, L, entry(3, encode_batch([LeaseRevoke(9)])))  # L's leader expired it
    run(st, R, entry(3, encode_batch([LeaseRevoke(4)])))  # R's leader expired this one
    src = prepare(st, 4)
    run(st, L, entry(4, cmds.encode(cmds.CommitMerge(src))))
    leases = dict(st.kv(L).leases())
    assert {k: v.remaining_ms for k, v in leases.items()} == {9: 0, 4: 0}
    t = LeaderLeases()
    t.sync(term=2, now=100.0, records=list(leases.items()))
    revokes = t.due(100.0)
    assert sorted(r.lease for r in revokes) == [4, 9]
    run(st, L, entry(5, encode_batch(list(revokes))))
    assert st.kv(L).leases() == []
    assert [kv.key for kv in st.kv(L).scan()] == []


def test_a_keep_alive_does_not_revive_a_lease_the_merge_ran_out(st: NodeStorage) -> None:
    """A keep-alive of lease 9 (its client renews it on every shard) applied between the
    merge that ran it out and the revoke the target's leader then proposes: it renewed the
    record (the lease was alive again with R's keys, though L's leader had expired it and
    deleted L's), and the revoke, made for the run-out record, was refused."""
    from kvstore.node.lease_expiry import LeaderLeases
    from kvstore.statemachine import LeaseGrant, LeaseKeepAlive, LeaseRevoke

    run(st, L, entry(1, encode_batch([LeaseGrant(9, 10_000)])))
    run(st, R, entry(1, encode_batch([LeaseGrant(9, 10_000)])))
    run(st, R, entry(2, encode_batch([Put(b"pear", b"1", lease=9)])))
    run(st, L, entry(2, encode_batch([LeaseRevoke(9)])))  # L's leader expired it
    src = prepare(st, 3)
    run(st, L, entry(3, cmds.encode(cmds.CommitMerge(src))))
    t = LeaderLeases()
    t.sync(term=2, now=100.0, records=list(st.kv(L).leases()))
    revokes = t.due(100.0)
    out, _ = run(st, L, entry(4, encode_batch([LeaseKeepAlive(9)])))
    assert out[0].error == ApplyError.LEASE_NOT_FOUND
    run(st, L, entry(5, encode_batch(list(revokes))))
    assert st.kv(L).leases() == []
    assert [kv.key for kv in st.kv(L).scan()] == []
