"""A retried command in a batch gets its own answer, through the real apply and driver.

Regression for the Jepsen "stale strong read" on key r7 (register, nemesis all, seed 11,
isolate leader n3): it was no stale read. A cas(0 -> 1) reached a quorum just before n3
was cut off; the new leader n1 committed it (so reads then saw 1, correctly), and the
client's retry of that cas (same client id and seq) landed in a batch with another
command. The state machine replayed the stored True answer under the ORIGINAL entry's
index, the driver matches answers to commands by entry index and position, so the retry
was answered with its neighbour's False: the history then had a read of 1 that no
acknowledged write explained. Flipping that one answer to True makes the recorded history
linearizable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from kvstore.consensus.types import Role
from kvstore.node import driver as driver_module
from kvstore.node import persist
from kvstore.node.driver import DriverConfig, NodeDriver
from kvstore.node.errors import UnavailableOp
from kvstore.node.metrics import NodeMetrics
from kvstore.statemachine import ApplyResult, Cas, Command, Put
from kvstore.storage import NodeStorage

pytestmark = pytest.mark.timeout(30)


def _propose(driver: NodeDriver, cmd: Command) -> asyncio.Future[ApplyResult]:
    fut: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
    driver.propose(1, cmd, 5.0, fut)
    return fut


async def _single_node_leader(path: Path) -> tuple[NodeDriver, NodeStorage]:
    storage = NodeStorage(str(path), map_size=1 << 24, sync=False)
    storage.group(1).bootstrap(frozenset({1}))
    driver = NodeDriver(
        DriverConfig(node_id=1, tick_ms=5, election_ticks=4),
        storage,
        NodeMetrics(),
        endpoints={1: "unused:0"},
    )
    driver.start()
    for _ in range(2000):
        if driver.groups[1].role == Role.LEADER:
            return driver, storage
        await asyncio.sleep(0.005)
    raise AssertionError("a single voter should elect itself")


def test_retry_batched_with_another_command_keeps_its_own_answer(tmp_path: Path) -> None:
    async def main() -> None:
        driver, storage = await _single_node_leader(tmp_path / "n1")
        try:
            await _propose(driver, Put(b"r7", b"0"))
            cas = Cas(b"r7", b"1", expected_value=b"0", client_id=9, seq=1)
            first = await _propose(driver, cas)
            assert first.ok
            # Both queued before the driver runs again: one log entry, retry first.
            retry = _propose(driver, cas)
            other = _propose(driver, Cas(b"r7", b"3", expected_value=b"2", client_id=9, seq=2))
            answers = await asyncio.gather(retry, other, return_exceptions=True)
            # Before the fix: [the neighbour's False, UnavailableOp("no apply result")].
            got = [a for a in answers if isinstance(a, ApplyResult)]
            assert len(got) == 2, answers
            assert got[0].index == got[1].index, "the two commands should share one entry"
            assert [r.ok for r in got] == [True, False], answers
            assert got[0].revision == first.revision  # the original write, not a new one
            kv = storage.kv(1).get(b"r7")
            assert kv is not None and kv.value == b"1" and kv.version == 2
        finally:
            await driver.stop()
            storage.close()

    asyncio.run(main())


def test_answers_that_do_not_line_up_are_unknown_never_shifted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If apply results ever stop naming their entry (as before the fix), the driver
    answers the entry's commands "unknown" rather than each with its neighbour's answer."""
    real = persist.persist_plans

    def shift(out: dict[int, list[ApplyResult]]) -> None:
        for rs in out.values():
            if len(rs) >= 2 and rs[0].index == rs[1].index:
                rs[0] = dataclasses.replace(rs[0], index=rs[0].index - 1)

    def stale_first_index(*args: Any) -> dict[int, list[ApplyResult]]:
        # The results reach the driver twice: early (on_applied, before the commit) and
        # as the return value; both see the shifted answers.
        a = list(args)
        if len(a) > 4 and a[4] is not None:
            early = a[4]
            a[4] = lambda out: (shift(out), early(out))
        out = real(*a)
        shift(out)
        return out

    async def main() -> None:
        driver, storage = await _single_node_leader(tmp_path / "n1")
        try:
            await _propose(driver, Put(b"a", b"0"))
            monkeypatch.setattr(driver_module, "persist_plans", stale_first_index)
            first = _propose(driver, Put(b"a", b"1"))
            second = _propose(driver, Cas(b"a", b"2", expected_value=b"9"))
            answers = await asyncio.gather(first, second, return_exceptions=True)
            assert all(isinstance(a, UnavailableOp) and not a.definite for a in answers), answers
        finally:
            await driver.stop()
            storage.close()

    asyncio.run(main())


def test_a_write_is_answered_before_the_commit_that_applies_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer leaves once the apply is staged, while its transaction commits (the
    fsync); a strong read after it still waits for the commit (g.applied)."""
    real = persist.persist_plans
    committed_at: list[float] = []

    def slow_commit(*args: Any) -> dict[int, list[ApplyResult]]:
        a = list(args)
        if len(a) > 4 and a[4] is not None:
            early = a[4]

            def then_slow(out: dict[int, list[ApplyResult]]) -> None:
                early(out)
                time.sleep(0.3)  # a slow fsync, in the writer thread

            a[4] = then_slow
        out = real(*a)
        committed_at.append(time.monotonic())
        return out

    async def main() -> None:
        driver, storage = await _single_node_leader(tmp_path / "n1")
        try:
            monkeypatch.setattr(driver_module, "persist_plans", slow_commit)
            write = _propose(driver, Put(b"k", b"v"))
            res = await write
            answered = time.monotonic()
            assert storage.kv(1).applied_index() < res.index  # not committed yet
            read: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            driver.read_barrier(1, "strong", 0, 5.0, read)
            applied = await read
            assert applied >= res.index
            assert storage.kv(1).get(b"k") is not None
            assert any(t > answered for t in committed_at), "answered after its commit"
        finally:
            await driver.stop()
            storage.close()

    asyncio.run(main())
