"""Automatic split: a shard's leader splits it at the middle of its data once it holds more
than ``--split-size`` bytes or ``--split-key-count`` keys (docs/sharding.md, "Automatic
split").

Rules this module keeps:
- Only the shard's leader decides, from its own data; the meta group is never split. The
  split is the online split (``kvstore.server.shard_admin.split_shard``): an id from the
  meta group, Split in the shard's own log, the halves reported. A leader change between
  the decision and the proposal makes the split fail (not leader, or the epoch moved),
  never happen twice.
- No thrash: one split at a time per node (so at most one per shard), and a split in
  flight is not started again. A shard taking part in a merge is not split (the merge
  would roll back); a merge whose result would be over a threshold is refused by the
  merge coordinator, so split and merge never undo each other. The halves hold about
  half the threshold each, so a half splits again only after growing by as much again
  (the hysteresis). A split that fails backs off exponentially (``MAX_BACKOFF_S``); one
  refused for want of a middle key (a shard that is one huge key) is retried only after
  its data changed and the backoff ran.
- Cheap: a shard is measured only when its applied index moved since the last measure,
  at most every ``period`` and no more often than ``COST_FACTOR`` times what its last
  measure took; a measure counts raw records, off the event loop, and stops at the caps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kvstore.consensus.types import Role
from kvstore.node import log
from kvstore.node.driver import NodeDriver
from kvstore.node.errors import InvalidOp
from kvstore.node.routing import LocalRouter
from kvstore.shard.descriptor import META_GROUP, Descriptor
from kvstore.shard.split import DEFAULT_SPLIT_KEY_COUNT, DEFAULT_SPLIT_SIZE

CHECK_PERIOD_S = 2.0
COST_FACTOR = 50.0
"""A measure that took t seconds is not repeated for COST_FACTOR * t (<= 2% of a core)."""
MAX_BACKOFF_S = 300.0
SPLIT_TIMEOUT_S = 30.0

Split = Callable[[int, float], Awaitable[tuple[Descriptor, Descriptor]]]
"""(shard, timeout) -> (left, right): the online split at the middle of the data."""


@dataclass(slots=True)
class _Watch:
    applied: int = -1
    """Applied index at the last measure (-1: measure again)."""
    next_at: float = 0.0
    fails: int = 0


class AutoSplitter:
    def __init__(
        self,
        driver: NodeDriver,
        router: LocalRouter,
        split: Split,
        *,
        max_bytes: int = DEFAULT_SPLIT_SIZE,
        max_keys: int = DEFAULT_SPLIT_KEY_COUNT,
        period: float = CHECK_PERIOD_S,
        merging: Callable[[int], int] | None = None,
    ) -> None:
        self.driver = driver
        self.router = router
        self.split = split
        self.max_bytes = max_bytes
        self.max_keys = max_keys
        self.period = period
        self.merging: Callable[[int], int] = merging or (lambda shard: 0)
        """Shard -> the other shard of a merge of it under way (0: none)."""
        self._watch: dict[int, _Watch] = {}
        self._inflight: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 or self.max_keys > 0

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._run(), name="autosplit")

    async def stop(self) -> None:
        for task in (self._task, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.round()
            except Exception as e:  # a failed round is retried next period
                log.event("autosplit_round_failed", level=30, error=repr(e))

    def over(self, keys: int, size: int) -> bool:
        return (0 < self.max_keys < keys) or (0 < self.max_bytes < size)

    async def round(self) -> int | None:
        """Measure the led shards that are due; start splitting the first one over a
        threshold (its id), unless a split is already running here."""
        if self._inflight is not None and not self._inflight.done():
            return None
        led = [
            gid
            for gid, g in sorted(self.driver.groups.items())
            if gid != META_GROUP
            and g.role == Role.LEADER
            and self.router.get(gid) is not None
            # A split would make the merge roll back (the target's epoch moved) or apply
            # as nothing (a frozen source): wait until the merge is over.
            and not self.merging(gid)
        ]
        self._watch = {gid: w for gid, w in self._watch.items() if gid in self.driver.groups}
        for gid in led:
            w = self._watch.setdefault(gid, _Watch())
            reader = self.driver.storage.kv(gid)
            applied = reader.applied_index()
            now = time.monotonic()
            if now < w.next_at or applied == w.applied:
                continue
            keys, size = await asyncio.to_thread(reader.measure, self.max_keys, self.max_bytes)
            took = time.monotonic() - now
            w.applied = applied
            w.next_at = max(w.next_at, now + took * COST_FACTOR)
            if self.over(keys, size):
                self._inflight = asyncio.create_task(
                    self._split(gid, w, keys, size), name=f"autosplit-{gid}"
                )
                return gid
        return None

    async def _split(self, gid: int, w: _Watch, keys: int, size: int) -> None:
        log.event("auto_split_started", group=gid, keys=keys, bytes=size)
        try:
            _, right = await self.split(gid, SPLIT_TIMEOUT_S)
        except Exception as e:  # OpError and anything unexpected: back off
            w.fails += 1
            w.next_at = time.monotonic() + min(self.period * 2**w.fails, MAX_BACKOFF_S)
            if not isinstance(e, InvalidOp):
                w.applied = -1  # transient (leadership, epoch, timeout): measure again
            log.event("auto_split_failed", level=30, group=gid, error=str(e) or repr(e))
            return
        w.fails = 0
        w.applied = -1  # the left half is smaller now: measure it afresh
        w.next_at = time.monotonic() + self.period
        log.event(
            "auto_split",
            group=gid,
            new_group=right.id,
            at=right.start.decode("utf-8", "backslashreplace"),
            keys=keys,
            bytes=size,
        )
