"""Reporter: keeps the meta group's shard map up to date with this node's replicas.

Rule: whenever a hosted replica's descriptor differs from the last one the meta group
acknowledged from this node, all changed descriptors go out in ONE Report (so the two
halves of a split, which change together on every replica, arrive together and the map
never shows a gap). The meta group keeps only what is newer, so reports from lagging
replicas, duplicates and late ones are harmless. A failed report is retried every period;
a meta leader that died between a split and its report loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib

from kvstore.node import log
from kvstore.node.errors import OpError
from kvstore.node.meta import MetaClient
from kvstore.node.routing import LocalRouter
from kvstore.shard import commands as cmds
from kvstore.shard.descriptor import Descriptor

PERIOD_S = 1.0


class Reporter:
    def __init__(self, router: LocalRouter, meta: MetaClient, period: float = PERIOD_S) -> None:
        self.router = router
        self.meta = meta
        self.period = period
        self._acked: dict[int, Descriptor] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="shard-reporter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def poke(self) -> None:
        self._wake.set()

    def pending(self) -> list[Descriptor]:
        return [d for d in self.router.descriptors() if self._acked.get(d.id) != d]

    async def report_now(self, timeout: float = 5.0) -> None:
        changed = self.pending()
        if not changed:
            return
        await self.meta.propose(cmds.Report(tuple(changed)), timeout)
        for d in changed:
            self._acked[d.id] = d

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.period)
            self._wake.clear()
            try:
                await self.report_now()
            except OpError as e:
                log.event("shard_report_failed", level=20, error=e.message)
            except Exception as e:  # never let reporting end: the next period retries
                log.event("shard_report_failed", level=30, error=repr(e))
