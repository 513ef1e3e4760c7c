"""Which of the driver's transactions are flushed as durable (node/persist.py ``durable``).

A transaction that saves log entries or a term / vote must be durable before anything
depending on it leaves the node; one that only applies committed entries need not be
(a power loss may undo it: storage/env.py). Why that is safe is proved by the driver
model's power-loss crashes (tests/sim/driver_model.py); this checks the real driver and
storage decide it so: every save is durable, and apply-only transactions are not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kvstore.consensus.types import Entry, EntryType, HardState, Ready, Role
from kvstore.node import persist
from kvstore.node.driver import DriverConfig, NodeDriver
from kvstore.node.metrics import NodeMetrics
from kvstore.node.persist import Plan, persist_plans
from kvstore.shard import Descriptor
from kvstore.shard import commands as cmds
from kvstore.statemachine import Put, encode_batch
from kvstore.storage import NodeStorage
from kvstore.storage.writer import Writer

pytestmark = pytest.mark.timeout(30)


class _RecordingStorage(NodeStorage):
    """The real storage, noting per transaction: durable?, did it save log entries or a
    snapshot?, the (term, vote) it saved if any."""

    def __init__(self, path: str) -> None:
        super().__init__(path, map_size=1 << 24)  # sync=True: real flushes
        self.txns: list[tuple[bool, bool, tuple[int, int] | None]] = []

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[Writer]:
        log: list[bool] = []
        vote: list[tuple[int, int]] = []
        with super().write(durable=durable) as w:
            save = w.save

            def recording_save(group: int, **kwargs: Any) -> None:
                log.append(bool(kwargs.get("entries")) or kwargs.get("snapshot") is not None)
                hs = kwargs.get("hard_state")
                if hs is not None:
                    vote.append((hs.term, hs.vote))
                save(group, **kwargs)

            w.save = recording_save  # type: ignore[method-assign]
            yield w
        self.txns.append((durable, any(log), vote[-1] if vote else None))


def test_saves_are_durable_and_apply_only_transactions_are_not(tmp_path: Path) -> None:
    async def main() -> None:
        storage = _RecordingStorage(str(tmp_path / "n1"))
        storage.group(1).bootstrap(frozenset({1}))
        driver = NodeDriver(
            DriverConfig(node_id=1, tick_ms=5, election_ticks=4),
            storage,
            NodeMetrics(),
            endpoints={1: "unused:0"},
        )
        driver.start()
        try:
            for _ in range(2000):
                if driver.groups[1].role == Role.LEADER:
                    break
                await asyncio.sleep(0.005)
            for i in range(20):
                fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                driver.propose(1, Put(b"k%d" % i, b"v"), 5.0, fut)
                assert (await fut).ok
        finally:
            await driver.stop()
        durable_vote = (0, 0)
        for durable, saved_log, vote in storage.txns:
            if saved_log or (vote is not None and vote != durable_vote):
                assert durable, storage.txns
            if vote is not None:
                durable_vote = vote
        # A single voter commits an entry once it is saved; the next Ready only applies
        # it (and moves the commit index): one unflushed transaction per write.
        assert sum(1 for durable, _, _ in storage.txns if not durable) >= 20, storage.txns
        kv = storage.kv(1).get(b"k19")
        assert kv is not None and kv.value == b"v"
        storage.close()

    asyncio.run(main())


class _FlushCounting(NodeStorage):
    """The real storage (sync=True), counting the meta-page flushes that make a
    transaction durable."""

    flushes = 0

    def _flush_meta(self) -> None:
        self.flushes += 1
        super()._flush_meta()


def test_an_apply_only_transaction_applying_a_prepare_merge_is_flushed(tmp_path: Path) -> None:
    """A merge coordinator commits a merge once every source replica's Status shows its
    PrepareMerge applied; the source's other replicas are then destroyed. Had a power
    loss undone this node's apply, its source replica would stay short of the merge
    index (no leader left to commit it again) and its CommitMerge would absorb an
    incomplete source: the apply must be durable before the node reports it."""
    st = _FlushCounting(str(tmp_path / "n1"), map_size=1 << 24)
    try:
        st.group(1).bootstrap({1, 2, 3}, Descriptor(id=1, end=b"m", voters=(1, 2, 3)))
        st.group(2).bootstrap({1, 2, 3}, Descriptor(id=2, start=b"m", voters=(1, 2, 3)))
        src, tgt = st.group(2).view.shard, st.group(1).view.shard
        assert src is not None and tgt is not None
        put = Entry(term=1, index=1, type=EntryType.NORMAL, data=encode_batch([Put(b"p", b"1")]))
        prep = cmds.encode(cmds.PrepareMerge(1, src.epoch, tgt.epoch))
        merge = Entry(term=1, index=2, type=EntryType.NORMAL, data=prep)
        with st.write() as w:  # appended (durable), not applied yet
            w.save(2, entries=[put, merge], hard_state=HardState(term=1, vote=1))

        def apply_only(e: Entry) -> None:
            rd = Ready(committed=[e], hard_state=HardState(term=1, vote=1, commit=e.index))
            plan = Plan(group=2, rd=rd, compact_to=0, log_changes=False)
            assert not persist.durable([plan])
            persist_plans(st, NodeMetrics(), [plan])

        before = st.flushes
        apply_only(put)
        assert st.flushes == before  # a write's apply: not flushed (02459de)
        apply_only(merge)
        assert st.flushes == before + 1
        d = st.group(2).view.shard
        assert d is not None and d.merging_into == 1
    finally:
        st.close()
