"""Property of merges and client sessions (storage/tables.py merge_sessions_from): after a
merge, a retry of any write that applied on either side before it is answered from its
session or refused (SESSION_EXPIRED), never applied again, whatever the two groups' log
clocks (they drift apart: each counts its own leaders' monotonic time) and however idle
each session was on each side, short of being forgotten. Found two ways a retry applied
twice: an expired session counted as absent, and the later clock of the two making the
other side's live sessions look forgotten."""

from __future__ import annotations

import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.shard import Descriptor
from kvstore.shard import commands as cmds
from kvstore.statemachine import ApplyError, Put, encode_batch
from kvstore.statemachine.apply import SESSION_FORGET_MS, SESSION_IDLE_MS
from kvstore.storage import NodeStorage

from .test_merge_storage import VOTERS, L, R, entry, prepare, run

IDLE = SESSION_FORGET_MS // 3
"""Log time one side moves at most (sessions stay short of forgotten)."""
STEP = st.tuples(
    st.sampled_from([L, R]),  # the shard written
    st.integers(1, 3),  # the client
    st.sampled_from([0, 1000, SESSION_IDLE_MS // 2, SESSION_IDLE_MS + 1]),  # log time since
)


@settings(max_examples=60, deadline=None)
@given(st.lists(STEP, min_size=1, max_size=12), st.integers(0, IDLE))
def test_no_write_applies_twice_across_a_merge(
    steps: list[tuple[int, int, int]], drift: int
) -> None:
    with tempfile.TemporaryDirectory() as d:
        s = NodeStorage(d, map_size=16 << 20, sync=False)
        s.group(L).bootstrap(set(VOTERS), Descriptor(id=L, end=b"m", voters=VOTERS))
        s.group(R).bootstrap(set(VOTERS), Descriptor(id=R, start=b"m", voters=VOTERS))
        index = {L: 0, R: 0}
        clock = {L: 1_000, R: 1_000 + drift}
        moved = {L: 0, R: 0}
        seqs: dict[int, int] = {}
        applied: list[Put] = []
        for n, (g, client, dt) in enumerate(steps):
            dt = dt if moved[g] + dt <= IDLE else 0
            moved[g] += dt
            clock[g] += dt
            index[g] += 1
            seqs[client] = seqs.get(client, 0) + 1
            key = (b"a" if g == L else b"p") + bytes([client])
            cmd = Put(key, b"%d" % n, client, seqs[client], 1)
            out, _ = run(s, g, entry(index[g], encode_batch([cmd], clock[g])))
            if out[0].ok:
                applied.append(cmd)
        src = prepare(s, index[R] + 1)
        run(s, L, entry(index[L] + 1, cmds.encode(cmds.CommitMerge(src))))
        before = [(kv.key, kv.value, kv.mod_revision) for kv in s.kv(L).scan()]
        out, _ = run(s, L, entry(index[L] + 2, encode_batch(list(applied), clock[L] + 10)))
        for cmd, r in zip(applied, out, strict=True):
            answered = r.ok and r.kv is None  # a stored answer carries no values
            assert answered or r.error == ApplyError.SESSION_EXPIRED, (cmd, r)
        assert [(kv.key, kv.value, kv.mod_revision) for kv in s.kv(L).scan()] == before
        s.close()
