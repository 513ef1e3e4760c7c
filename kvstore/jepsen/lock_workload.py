"""The ``lock`` workload: workers take one lock (kvstore/client/lock.py) and, while they
hold it, append their fencing token to a guarded resource twice, a fenced append each
time (a strong read, then a cas that only succeeds if no larger token was appended yet).

With a small chance a holder stalls past its TTL with its keep-alive stopped (``stall``),
as a paused process would. Each ``hold`` operation returns ``(token, accepted appends,
acquired at, released at, stalled)`` (monotonic seconds: when the lock was won and given
up, as the holder saw it).

Checked (anomalies make the run invalid):
- no two holds got the same token, and a hold that completed before another began has
  the smaller token (tokens follow the order in which the lock was won);
- the resource holds tokens in non-decreasing order (no holder's write landed after a
  later holder's: the fence worked), and every append a holder saw accepted is there
  (none lost).
Reported, not an anomaly (``findings``): holds whose intervals overlapped in real time,
i.e. two clients that both believed they held the lock at once. A lease-based lock
allows that when a holder stalls past its TTL (Jepsen's etcd 3.4.3 analysis); the fence
is what keeps the resource safe anyway.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kvstore.jepsen.checker.models import Model
from kvstore.jepsen.history import Event
from kvstore.jepsen.workloads import Invocation, Store

LOCK = "jepsen-lock"
RESOURCE = "jepsen-lock-resource"


def _tokens(b: bytes | None) -> list[int]:
    return [int(x) for x in b.split(b",")] if b else []


async def fenced_append(store: Any, token: int, attempts: int = 8) -> bool:
    """Append ``token`` to the resource unless a larger one is there; True if it was."""
    for _ in range(attempts):
        cur = await store.get(RESOURCE, "strong")
        have = _tokens(cur)
        if have and have[-1] > token:
            return False  # fenced out: a later holder has written
        new = ",".join(str(t) for t in (*have, token))
        if await store.cas(RESOURCE, cur, new):
            return True
    return False


@dataclass(slots=True)
class LockWorkload:
    ttl: float = 1.0
    hold: float = 0.2
    """Mean seconds a holder waits between its two appends."""
    wait: float = 1.0
    """Seconds a worker waits for the lock before its hold fails (definite). With the
    run's operation timeout (2 s) a hold that takes longer is cancelled: unknown."""
    stall: float = 0.2
    """Chance that a holder stalls (a GC pause, a stopped VM: its keep-alive stops too)
    for 1.5 TTLs between its appends, so its lease expires while it believes it holds."""
    name: str = "lock"
    model: Model | None = None
    keys: list[str] = field(default_factory=lambda: [RESOURCE])

    def generate(self, worker: int, process: int, rng: random.Random) -> Invocation:
        return Invocation(f="hold", key=LOCK)

    async def execute(self, store: Store, inv: Invocation, read_mode: str) -> Any:
        if inv.f == "read":
            return tuple(_tokens(await store.get(inv.key, "strong")))
        client: Any = store  # an AsyncClient: the lock helper is not in the Store slice
        async with client.lock(LOCK, ttl=self.ttl, timeout=self.wait) as held:
            acquired = time.monotonic()
            accepted = int(await fenced_append(client, held.token))
            stalled = random.random() < self.stall
            if stalled:
                await held.keep_alive.stop()
                await asyncio.sleep(1.5 * self.ttl)
            else:
                await asyncio.sleep(random.uniform(0, 2 * self.hold))
            accepted += int(await fenced_append(client, held.token))
            released = time.monotonic()
        return (held.token, accepted, acquired, released, stalled)

    def on_new_process(self, worker: int, process: int) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _Hold:
    process: int
    invoked: float
    completed: float
    token: int
    accepted: int
    acquired: float
    released: float
    stalled: bool


def _holds(events: Sequence[Event]) -> list[_Hold]:
    invoked: dict[int, float] = {}
    out = []
    for e in events:
        if e.f != "hold":
            continue
        if e.type == "invoke":
            invoked[e.process] = e.time
        elif e.type == "ok" and e.value is not None:
            token, accepted, acquired, released, *rest = e.value
            out.append(
                _Hold(
                    e.process,
                    invoked.get(e.process, e.time),
                    e.time,
                    token,
                    accepted,
                    acquired,
                    released,
                    bool(rest and rest[0]),
                )
            )
    return out


def check_lock(events: Sequence[Event], final: dict[str, Any]) -> list[str]:
    """The anomalies of a lock history (see the module doc); [] when it is valid."""
    anomalies: list[str] = []
    holds = _holds(events)
    seen: dict[int, _Hold] = {}
    for h in holds:
        if h.token in seen:
            anomalies.append(
                f"two holds got fencing token {h.token} (processes {seen[h.token].process} "
                f"and {h.process})"
            )
        seen[h.token] = h
    by_end = sorted(holds, key=lambda h: h.completed)
    for b in holds:
        for a in by_end:
            if a.completed >= b.invoked:
                break
            if a.token >= b.token:
                anomalies.append(
                    f"hold of process {b.process} (token {b.token}) began after the hold of "
                    f"process {a.process} (token {a.token}) had ended, with a token not larger"
                )
    resource = list(final.get(RESOURCE) or ())
    for i in range(1, len(resource)):
        if resource[i] < resource[i - 1]:
            anomalies.append(
                f"resource accepted token {resource[i]} after {resource[i - 1]} (at {i}): "
                "a fenced write landed after a later holder's"
            )
            break
    if RESOURCE in final:
        for h in holds:
            got = resource.count(h.token)
            if got < h.accepted:
                anomalies.append(
                    f"token {h.token}: {h.accepted} appends acknowledged, {got} in the resource"
                )
    return anomalies


def findings(events: Sequence[Event]) -> dict[str, Any]:
    """What the run showed beyond validity: holds, and holds that overlapped in time."""
    holds = sorted(_holds(events), key=lambda h: h.acquired)
    overlaps = []
    for i, a in enumerate(holds):
        for b in holds[i + 1 :]:
            if b.acquired >= a.released:
                break
            overlaps.append((a.token, b.token, round(a.released - b.acquired, 3), a.stalled))
    return {
        "holds": len(holds),
        "stalled_holds": sum(h.stalled for h in holds),
        "overlapping_holds": len(overlaps),
        "overlapping_without_stall": sum(not o[3] for o in overlaps),
        "overlaps": overlaps[:20],
        "fenced_out_appends": sum(2 - h.accepted for h in holds),
    }
