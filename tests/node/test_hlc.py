"""The hybrid-clock causal token (kvstore/node/hlc.py, statemachine/apply.py,
docs/sharding.md): the clock's rules, the applied-time rule, the merge rule, and a model
of causal sessions over several groups whose leaders' clocks are skewed, restart and
change, checking that skew only delays reads and never breaks a session guarantee.
"""

from __future__ import annotations

import heapq
import itertools
import tempfile
from dataclasses import dataclass, field

from hypothesis import example, given, settings
from hypothesis import strategies as st

from kvstore.node.hlc import MAX_AHEAD_MS, GroupTime, HybridClock, pack, physical_ms
from kvstore.node.pending import Waiter
from kvstore.statemachine import MemoryKV, Put
from kvstore.storage import NodeStorage
from kvstore.storage.tables import GroupTables

MS = st.integers(min_value=0, max_value=1 << 44)


@given(st.lists(st.tuples(st.booleans(), MS), max_size=60))
def test_clock_never_goes_back_and_ticks_above_all_it_saw(steps: list[tuple[bool, int]]) -> None:
    clock = HybridClock()
    last, seen = 0, 0
    for is_tick, v in steps:
        if is_tick:  # v: the wall clock, which may jump back (skew, NTP)
            t = clock.tick(v)
            assert t > last and t > seen, "strictly rising, above every time observed"
            assert t >= pack(v), "never behind the wall clock"
            last = t
        else:  # v: a time seen in a log or a request
            clock.observe(pack(v, 7))
            seen = max(seen, pack(v, 7))
    assert clock.last >= max(last, seen)


def test_outside_times_are_bounded_by_the_wall_clock() -> None:
    now = 1_700_000_000_000
    clock = HybridClock()
    assert clock.acceptable(pack(now + MAX_AHEAD_MS), now)
    assert not clock.acceptable(pack(now + MAX_AHEAD_MS + 1), now)
    assert not clock.acceptable((1 << 64) - 1, now)
    # Ahead of the wall clock but not of what this clock already saw (a skewed leader's
    # stamps reached it): still acceptable.
    clock.observe(pack(now + 2 * MAX_AHEAD_MS))
    assert clock.acceptable(pack(now + 2 * MAX_AHEAD_MS), now)


def test_pack_layout() -> None:
    assert pack(5, 3) == (5 << 16) | 3
    assert physical_ms(pack(123456, 65535)) == 123456


@given(st.lists(st.integers(min_value=0, max_value=1 << 62), max_size=40))
def test_applied_time_rises_with_the_index_whatever_the_stamps(stamps: list[int]) -> None:
    a, b = MemoryKV(), MemoryKV()
    times = []
    for i, s in enumerate(stamps, start=1):
        a.apply(i, [Put(b"k", str(i).encode())], stamp=s)
        times.append(a.time)
        assert a.time >= s, "an entry's time is at least its stamp"
    assert all(x < y for x, y in itertools.pairwise(times)), "strictly rising"
    # Another replica from a snapshot at any point computes the same times.
    cut = len(stamps) // 2
    b.time = times[cut - 1] if cut else 0
    for i, s in enumerate(stamps[cut:], start=cut + 1):
        b.apply(i, [], stamp=s)
        assert b.time == times[i - 1]


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 1 << 62), st.integers(0, 1 << 62))
def test_merge_takes_the_later_applied_time_and_split_copies_it(left: int, right: int) -> None:
    with tempfile.TemporaryDirectory() as d, NodeStorage(d, sync=False) as s:
        with s.env.begin(write=True) as txn:
            for g, t in ((1, left), (2, right)):
                tables = GroupTables(txn, s.dbs, g)
                tables.set_clock(1000)
                tables.set_applied_time(t)
                tables.flush()
            target = GroupTables(txn, s.dbs, 1)
            target.merge_sessions_from(2, 10)
            target.copy_sessions_to(3)  # a split copies the record
        assert s.kv(1).applied_time() == max(left, right)
        assert s.kv(3).applied_time() == max(left, right)


def test_group_time_answers_due_waiters_expires_late_ones_and_throttles_asks() -> None:
    gt = GroupTime()
    done: list[int] = []

    class Fut:
        def __init__(self, n: int) -> None:
            self.n = n

    for n, (t, dl) in enumerate([(5, 10.0), (3, 10.0), (9, 1.0)]):
        heapq.heappush(gt.waiters, (t, n, Waiter(Fut(n), dl)))  # type: ignore[arg-type]
    gt.applied = 5
    assert sorted(w.fut.n for w in gt.due()) == [0, 1]
    gt.expire(2.0, lambda w, t: done.append(t))
    assert done == [9] and gt.waiters == []
    assert gt.should_ask(7, 0.0) and not gt.should_ask(7, 0.1) and not gt.should_ask(6, 0.1)
    assert gt.should_ask(8, 0.1), "a later time is asked at once"
    assert gt.should_ask(8, 0.5), "the same time again after ASK_AGAIN_S"


# -- a model: sessions over groups with skewed, restarting leaders ---------------------
@dataclass
class _Write:
    group: int
    time: int
    deps: frozenset[int]


@dataclass
class _Group:
    log: list[int] = field(default_factory=list)
    """Write ids (-1: an empty stamped entry) in log order."""
    times: list[int] = field(default_factory=list)
    leader: int = 0


@dataclass
class _Session:
    token: int = 0
    past: set[int] = field(default_factory=set)
    """Every write this session's causal past holds (its own, what it read, and theirs)."""


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(-(10**7), 10**7), min_size=3, max_size=3),  # node clock skews (ms)
    st.lists(
        st.tuples(
            st.sampled_from(["write", "read", "handoff", "leader", "tick"]),
            st.integers(0, 2),
            st.integers(0, 2),
            st.integers(0, 1000),
        ),
        max_size=80,
    ),
)
# A fast leader's write, then a slow leader's: the second entry's time must still be
# later, or a reader of the first would pass over the second writer's own write.
@example(
    [10**6, 0, 0], [("write", 0, 0, 0), ("leader", 1, 0, 0), ("write", 1, 0, 0), ("read", 1, 0, 1)]
)
# A token handed from one group's session to a write on another, idle group.
@example(
    [0, 10**6, 0], [("write", 0, 1, 0), ("handoff", 0, 1, 0), ("write", 1, 0, 0), ("read", 1, 0, 0)]
)
def test_sessions_across_groups_hold_under_any_clock_skew(
    skews: list[int], ops: list[tuple[str, int, int, int]]
) -> None:
    """Groups 0..2 led by nodes whose wall clocks are off by ``skews``; each node's clock
    restarts empty when it becomes leader (the worst case: nothing observed). Replicas
    lag arbitrarily. A causal read at a replica whose applied time is below the token
    waits: the model lets it catch up and, where the log holds no later entry, the leader
    stamps an empty one. Every causal read must hold every write of its session's causal
    past in that group: read-your-writes, monotonic reads, monotonic writes and
    writes-follow-reads in one check."""
    real = 10**12
    clocks = [HybridClock() for _ in skews]
    groups = [_Group(leader=g) for g in range(3)]
    writes: list[_Write] = []
    sessions = [_Session() for _ in range(3)]

    def append(g: _Group, wid: int, token: int) -> int:
        clock = clocks[g.leader]
        clock.observe(token)  # a write is stamped above its token
        stamp = clock.tick(real + skews[g.leader])
        t = max(stamp, (g.times[-1] if g.times else 0) + 1)  # the apply rule
        g.log.append(wid)
        g.times.append(t)
        return t

    for kind, a, b, n in ops:
        real += n
        s, g = sessions[a], groups[b]
        if kind == "write":
            wid = len(writes)
            t = append(g, wid, s.token)
            writes.append(_Write(b, t, frozenset(s.past)))
            s.past.add(wid)
            s.token = max(s.token, t)
        elif kind == "read":
            # A lagging replica: any prefix of the log, then it waits for the token.
            applied = n % (len(g.log) + 1)
            stamped = 0
            while (g.times[applied - 1] if applied else 0) < s.token:
                if applied == len(g.log):
                    assert stamped == 0, "one stamped entry must reach the token"
                    append(g, -1, s.token)  # the leader stamps an empty entry
                    stamped += 1
                applied += 1
            seen = {w for w in g.log[:applied] if w >= 0}
            mine = {w for w in s.past if writes[w].group == b}
            assert mine <= seen, f"a causal read in group {b} misses {mine - seen}"
            for w in seen:
                s.past |= {w, *writes[w].deps}
            s.token = max(s.token, g.times[applied - 1] if applied else 0)
        elif kind == "handoff":  # session a hands its token (and so its past) to b
            sessions[b].token = max(sessions[b].token, s.token)
            sessions[b].past |= s.past
        elif kind == "leader":  # node a leads group b, with a clock that saw nothing
            g.leader = a
            clocks[a] = HybridClock()
        else:
            real -= 2 * n  # wall clocks jump back
