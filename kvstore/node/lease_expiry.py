"""Lease expiry: each group's leader decides when its leases run out, and says so in the log.

Rules (docs/leases.md):
- Only a leader times leases, on its own monotonic clock (the event loop's). No wall
  clock and no follower's clock is ever read: what every replica sees is the LeaseRevoke
  entry the leader proposes, applied at the same index everywhere.
- A leader starts every lease at the remaining TTL the log holds (the TTL after a grant
  or keep-alive, else the last checkpoint), from the moment it first sees the lease in
  its term: never earlier than the old leader would have expired it.
- It checkpoints what leases have left (LeaseCheckpoint entries), so a lease still runs
  out across leader changes instead of starting afresh at each one.
- Its revoke names the ``touched`` index it decided from: a keep-alive ordered first in
  the log cancels it (statemachine/leases.py).

``LeaderLeases`` is the pure part (time passed in); ``LeaseExpiry`` runs it on a node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvstore.consensus.types import Role
from kvstore.node import log
from kvstore.node.errors import OpError
from kvstore.node.pending import Callback
from kvstore.statemachine import ApplyResult, LeaseCheckpoint, LeaseRecord, LeaseRevoke

if TYPE_CHECKING:
    from kvstore.node.driver import NodeDriver
    from kvstore.storage import NodeStorage

PERIOD_S = 0.1
"""How often a leader looks at its leases: the lateness of an expiry past its TTL."""
CHECKPOINT_S = 1.0
"""How often a leader checkpoints leases whose remaining TTL fell noticeably."""
RETRY_S = 1.0
"""How long a proposed revoke may stay unapplied before the leader proposes it again."""


MIN_STEP_MS = 500


def _checkpoint_step(ttl_ms: int) -> int:
    """How far a lease's remaining TTL falls below its last checkpoint before another
    (the first of a leader's term: MIN_STEP_MS, see ``LeaderLeases.checkpoints``)."""
    return max(MIN_STEP_MS, ttl_ms // 5)


@dataclass(slots=True)
class LeaderLeases:
    """One group's lease deadlines as its leader keeps them (pure: ``now`` is given)."""

    term: int = -1
    deadline: dict[int, float] = field(default_factory=dict)
    touched: dict[int, int] = field(default_factory=dict)
    ttl_ms: dict[int, int] = field(default_factory=dict)
    stored_ms: dict[int, int] = field(default_factory=dict)
    """The remaining TTL the log holds (what a successor would start from)."""
    revoking: dict[int, float] = field(default_factory=dict)
    """Leases whose expiry is proposed, and when to propose it again."""
    last_checkpoint: float = float("-inf")
    checkpointed: set[int] = field(default_factory=set)
    """Leases this leader checkpointed in its term."""

    def sync(self, term: int, now: float, records: list[tuple[int, LeaseRecord]]) -> None:
        """Catch up with the applied leases; a new term starts every timer afresh."""
        if term != self.term:
            self.term = term
            self.deadline.clear()
            self.touched.clear()
            self.revoking.clear()
            self.checkpointed.clear()
            self.last_checkpoint = now
        seen = set()
        for lease, r in records:
            seen.add(lease)
            self.ttl_ms[lease] = r.ttl_ms
            self.stored_ms[lease] = r.remaining_ms
            if self.touched.get(lease) != r.touched:
                # New to this leader, or granted / kept alive since: it has the remaining
                # TTL from now (at least what it had: the apply was not before now).
                self.touched[lease] = r.touched
                self.deadline[lease] = now + r.remaining_ms / 1000
                self.revoking.pop(lease, None)
        for lease in [x for x in self.deadline if x not in seen]:
            for d in (self.deadline, self.touched, self.ttl_ms, self.stored_ms, self.revoking):
                d.pop(lease, None)
            self.checkpointed.discard(lease)

    def remaining_ms(self, lease: int, now: float) -> int | None:
        d = self.deadline.get(lease)
        return None if d is None else max(0, int((d - now) * 1000))

    def due(self, now: float) -> list[LeaseRevoke]:
        """The expiries to propose now."""
        out = []
        for lease, d in self.deadline.items():
            if d <= now and self.revoking.get(lease, 0.0) <= now:
                self.revoking[lease] = now + RETRY_S
                out.append(LeaseRevoke(lease, if_touched=self.touched[lease]))
        return out

    def checkpoints(self, now: float) -> list[LeaseCheckpoint]:
        """Every CHECKPOINT_S: the leases whose remaining TTL fell well below the log's.
        A lease's first checkpoint in a term needs it to have fallen by MIN_STEP_MS only:
        a successor restarts the lease from the log, so what a leader does not record is
        lost, and with a fifth of the TTL asked of every leader, leaders that changed
        faster than that (12 s for a 60 s TTL) kept a lease nobody renewed alive for as
        long as they did. It costs one more checkpoint per lease per term; every leader
        that leads for CHECKPOINT_S now records what its term used."""
        if now - self.last_checkpoint < CHECKPOINT_S:
            return []
        self.last_checkpoint = now
        out = []
        for lease, d in self.deadline.items():
            left = max(0, int((d - now) * 1000))
            step = (
                _checkpoint_step(self.ttl_ms[lease]) if lease in self.checkpointed else MIN_STEP_MS
            )
            if left < self.stored_ms[lease] - step:
                out.append(LeaseCheckpoint(lease, left, if_touched=self.touched[lease]))
                self.stored_ms[lease] = left
                self.checkpointed.add(lease)
        return out

    def cancel(self, lease: int) -> None:
        """A proposed revoke failed: propose again on the next look."""
        self.revoking.pop(lease, None)


class LeaseExpiry:
    """Runs ``LeaderLeases`` for every group this node leads (a task of the node)."""

    def __init__(self, driver: NodeDriver, storage: NodeStorage) -> None:
        self.driver = driver
        self.storage = storage
        self.groups: dict[int, LeaderLeases] = {}
        self._task: asyncio.Task[None] | None = None
        self.now: Callable[[], float] = lambda: asyncio.get_running_loop().time()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lease-expiry")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def leading(self, group: int) -> LeaderLeases | None:
        """This node's timers for ``group``, synced now; None unless it leads it."""
        g = self.driver.groups.get(group)
        if g is None or g.role != Role.LEADER:
            self.groups.pop(group, None)
            return None
        t = self.groups.setdefault(group, LeaderLeases())
        t.sync(g.term, self.now(), self.storage.kv(group).leases())
        return t

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(PERIOD_S)
            try:
                self.step()
            except Exception as e:  # a damaged record: say so, keep the node serving
                log.event("lease_expiry_failed", level=40, error=repr(e))

    def step(self) -> None:
        for gid in list(self.groups):
            if gid not in self.driver.groups:
                del self.groups[gid]
        for gid in list(self.driver.groups):
            t = self.leading(gid)
            if t is None or not t.deadline:
                continue
            now = self.now()
            for cmd in t.due(now) + t.checkpoints(now):
                self._propose(gid, t, cmd)

    def _propose(self, gid: int, t: LeaderLeases, cmd: LeaseRevoke | LeaseCheckpoint) -> None:
        def done(res: ApplyResult | None, err: OpError | None) -> None:
            if isinstance(cmd, LeaseRevoke):
                if err is not None:
                    t.cancel(cmd.lease)
                elif res is not None and res.ok:
                    log.event("lease_expired", group=gid, lease=cmd.lease, index=res.index)

        try:
            self.driver.propose(gid, cmd, RETRY_S * 5, Callback(done))
        except OpError:
            if isinstance(cmd, LeaseRevoke):
                t.cancel(cmd.lease)
