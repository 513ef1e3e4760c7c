"""GroupLog + the LMDB state machine held to MemoryStorage + MemoryKV (the reference twins)
by a hypothesis stateful test: random appends (with Ready-rule truncation), hard states,
applies, compactions, snapshot installs, aborted writes, other groups' writes and reopens
must leave both sides giving the same answers.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.types import (
    CompactedError,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
)
from kvstore.shard import Descriptor
from kvstore.statemachine import ApplyResult, Delete, MemoryKV, Put, decode_entry, encode_batch
from kvstore.statemachine.records import decode_kv, encode_kv
from kvstore.storage import NodeStorage
from kvstore.storage.snapshot import read_image, write_image

from . import sessions_view

G = 7
KEYS = st.sampled_from([b"a", b"b", b"c", b"dd"])
command = st.one_of(
    st.builds(
        Put,
        KEYS,
        st.binary(max_size=6),
        st.sampled_from([0, 1, 2]),
        st.integers(1, 4),
        st.sampled_from([1, 2]),
    ),
    st.builds(Delete, KEYS, st.sampled_from([0, 1]), st.integers(1, 4), st.just(1)),
)
entry_body = st.one_of(
    st.tuples(st.just(EntryType.NOOP), st.just(b"")),
    st.tuples(
        st.just(EntryType.NORMAL),
        st.builds(encode_batch, st.lists(command, max_size=3), st.integers(0, 10**6)),
    ),
    st.tuples(st.just(EntryType.NORMAL), st.just(b"")),
    st.tuples(st.just(EntryType.NORMAL), st.just(b"junk")),
)
voters = st.frozensets(st.integers(1, 5), min_size=1, max_size=3)


class LogModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="kvlog")
        # A tiny tail cache so both the cached and the LMDB read paths are exercised.
        self.open()
        assert self.log.bootstrap({1, 2, 3})
        self.model = MemoryStorage(voters={1, 2, 3})
        self.kv = MemoryKV()
        self.conf = ConfState(voters=frozenset({1, 2, 3}))
        self.undecodable = 0

    def open(self) -> None:
        self.st = NodeStorage(self.dir, map_size=32 << 20, sync=False, cache_entries=3)
        self.log = self.st.group(G)

    def teardown(self) -> None:
        self.st.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _entries(
        self, data: st.DataObject, bodies: list[tuple[int, tuple[EntryType, bytes]]]
    ) -> list[Entry]:
        """Entries with these bodies from a drawn index (at most one past the last, never
        at or below the applied one), appended to the model."""
        lo = max(self.kv.applied + 1, self.model.first_index())
        start = data.draw(st.integers(lo, self.model.last_index() + 1), label="start")
        ents = [
            Entry(term=term, index=start + i, type=t, data=d)
            for i, (term, (t, d)) in enumerate(bodies)
        ]
        self.model.append(ents)
        return ents

    @rule(
        data=st.data(),
        bodies=st.lists(st.tuples(st.integers(1, 3), entry_body), min_size=1, max_size=5),
    )
    def append(
        self, data: st.DataObject, bodies: list[tuple[int, tuple[EntryType, bytes]]]
    ) -> None:
        ents = self._entries(data, bodies)
        with self.st.write() as w:
            w.save(G, entries=ents)

    @rule(data=st.data(), bodies=st.lists(st.tuples(st.integers(1, 3), entry_body), max_size=4))
    def one_ready(
        self, data: st.DataObject, bodies: list[tuple[int, tuple[EntryType, bytes]]]
    ) -> None:
        """Append, hard state, apply and compact in ONE transaction, as the driver does."""
        ents = self._entries(data, bodies)
        upto = data.draw(st.integers(self.kv.applied, self.model.last_index()), label="upto")
        committed = self.model.entries(self.kv.applied + 1, upto + 1)
        hs = HardState(term=3, vote=1, commit=upto)
        self.model.set_hard_state(hs)
        want = self.model_apply(committed, upto)
        compact_to = data.draw(st.integers(self.model.first_index() - 1, upto), label="compact")
        self.model.compact(compact_to)
        with self.st.write() as w:
            w.save(G, hard_state=hs, entries=ents)
            assert w.apply(G, committed) == want
            w.compact(G, compact_to)

    def model_apply(self, ents: list[Entry], upto: int) -> list[ApplyResult]:
        want: list[ApplyResult] = []
        for e in ents:
            if e.type == EntryType.NORMAL and e.data:
                try:
                    batch = decode_entry(e.data)
                    want += self.kv.apply(e.index, batch.commands, batch.time_ms, batch.stamp)
                except ValueError:
                    self.undecodable += 1
        self.kv.applied = upto
        return want

    @rule(term=st.integers(0, 9), vote=st.integers(0, 3), commit=st.integers(0, 30))
    def hard_state(self, term: int, vote: int, commit: int) -> None:
        hs = HardState(term=term, vote=vote, commit=commit)
        self.model.set_hard_state(hs)
        with self.st.write() as w:
            w.save(G, hard_state=hs)

    @precondition(lambda self: self.model.last_index() > self.kv.applied)
    @rule(data=st.data())
    def apply(self, data: st.DataObject) -> None:
        upto = data.draw(st.integers(self.kv.applied + 1, self.model.last_index()), label="upto")
        ents = self.model.entries(self.kv.applied + 1, upto + 1)
        want = self.model_apply(ents, upto)
        with self.st.write() as w:
            got = w.apply(G, ents)
        assert got == want

    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(self.model.first_index() - 1, self.kv.applied))
        self.model.compact(index)
        with self.st.write() as w:
            w.compact(G, index)

    @rule(data=st.data(), cmds=st.lists(command, max_size=4), conf=voters)
    def install_snapshot(
        self, data: st.DataObject, cmds: list[Put | Delete], conf: frozenset[int]
    ) -> None:
        index = data.draw(st.integers(self.kv.applied + 1, self.model.last_index() + 3))
        term = data.draw(st.integers(1, 9))
        other = MemoryKV()
        other.apply(index, cmds)
        image = write_image(
            index,
            ((k, encode_kv(other.data[k])) for k in sorted(other.data)),
            sessions_view.rows(other),
        )
        meta = SnapshotMetadata(index=index, term=term, conf_state=ConfState(voters=conf))
        snap = Snapshot(metadata=meta, data=image)
        self.model.apply_snapshot(snap)
        self.kv = other
        self.conf = meta.conf_state
        with self.st.write() as w:
            w.save(G, snapshot=snap)

    @rule(conf=voters)
    def set_conf_state(self, conf: frozenset[int]) -> None:
        self.conf = ConfState(voters=conf)
        with self.st.write() as w:
            w.set_conf_state(G, self.conf)

    @rule(term=st.integers(1, 3))
    def aborted_write(self, term: int) -> None:
        """Anything staged in a transaction that raises leaves no trace."""
        ents = [Entry(term=term, index=self.model.last_index() + 1, data=b"x")]
        with pytest.raises(RuntimeError), self.st.write() as w:
            w.save(G, hard_state=HardState(term=99), entries=ents)
            w.apply(G, self.model.entries(self.kv.applied + 1, self.model.last_index() + 1))
            w.set_conf_state(G, ConfState(voters=frozenset({42})))
            raise RuntimeError("boom")

    @rule(other=st.sampled_from([G - 1, G + 1]), cmds=st.lists(command, min_size=1, max_size=3))
    def other_group_writes(self, other: int, cmds: list[Put | Delete]) -> None:
        """Another group on the node, owning a range none of KEYS is in: its log is its
        own, and its commands on our keys apply as nothing (WRONG_SHARD)."""
        log = self.st.group(other)
        log.bootstrap({1}, Descriptor(id=other, start=b"x", end=b"y", voters=(1,)))
        e = Entry(term=1, index=log.last_index() + 1, data=encode_batch(cmds))
        with self.st.write() as w:
            w.save(other, entries=[e])
            w.apply(other, [e])
            w.compact(other, max(0, e.index - 2))

    @rule()
    def snapshot_is_the_applied_image(self) -> None:
        snap = self.log.snapshot()
        applied = self.kv.applied
        want_meta = SnapshotMetadata(
            index=applied, term=self.model.term(applied), conf_state=self.conf
        )
        assert snap.metadata == want_meta
        image = read_image(G, applied, snap.data)
        assert [decode_kv(k, r) for k, r in image.kv] == self.kv.scan(b"")
        assert sessions_view.from_rows(image.sessions, applied) == sessions_view.model(self.kv)

    @rule()
    def reopen(self) -> None:
        self.st.close()
        self.open()

    @rule(data=st.data())
    def ranged_entries(self, data: st.DataObject) -> None:
        first, last = self.model.first_index(), self.model.last_index()
        lo = data.draw(st.integers(max(0, first - 2), last + 1), label="lo")
        hi = data.draw(st.integers(lo, last + 2), label="hi")
        max_size = data.draw(st.none() | st.integers(0, 120), label="max_size")
        try:
            want: list[Entry] | type[Exception] = self.model.entries(lo, hi, max_size)
        except (CompactedError, UnavailableError) as e:
            want = type(e)
        try:
            got: list[Entry] | type[Exception] = self.log.entries(lo, hi, max_size)
        except (CompactedError, UnavailableError) as e:
            got = type(e)
        assert got == want

    @invariant()
    def same_log(self) -> None:
        m, log = self.model, self.log
        assert (log.first_index(), log.last_index()) == (m.first_index(), m.last_index())
        for i in range(m.first_index() - 1, m.last_index() + 1):
            assert log.term(i) == m.term(i), i
        if m.first_index() >= 2:
            with pytest.raises(CompactedError):
                log.term(m.first_index() - 2)
        with pytest.raises(UnavailableError):
            log.term(m.last_index() + 1)
        assert log.entries(m.first_index(), m.last_index() + 1) == m.entries(
            m.first_index(), m.last_index() + 1
        )

    @invariant()
    def same_state(self) -> None:
        assert self.log.initial_state() == (self.model.hard_state, self.conf)
        assert self.st.kv(G).applied_index() == self.kv.applied == self.log.applied_index()
        assert self.st.kv(G).scan() == self.kv.scan(b"")
        assert sessions_view.stored(self.st, G) == sessions_view.model(self.kv)


LogModel.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_group_log_matches_memory_storage = LogModel.TestCase
