"""Client failover with one node of three down (issue 18), on real processes.

One follower is killed (kill -9) or paused (SIGSTOP), or the leader is paused, during a
load of writes, eventual reads and causal reads, and the load goes on with fresh clients
while it stays down (the "before" case: their first contact with the node fails). In every
phase: no request fails, none takes longer than one election timeout plus one attempt,
and read throughput stays above half of the all-up phase's.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kvstore.client import AsyncClient

from .harness import LocalCluster, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ELECTION_TIMEOUT_S = 1.0
"""The harness's nodes run the defaults: 50 ms ticks, 10 election ticks, randomized up to
twice that."""
TIMEOUT_S = 5.0
KEYS = [f"k{i:03d}" for i in range(200)]
SHARED_CALLERS = 24
BOUND_CALLERS = 4


@dataclass
class Phase:
    seconds: float
    ops: dict[str, int] = field(default_factory=lambda: {"write": 0, "eventual": 0, "causal": 0})
    failures: list[str] = field(default_factory=list)
    slowest: dict[str, float] = field(default_factory=dict)
    retried: int = 0
    unreachable: int = 0
    """Attempts that found a node unreachable (stream broken, or no answer at all)."""
    callers: int = 0

    @property
    def reads_per_s(self) -> float:
        return (self.ops["eventual"] + self.ops["causal"]) / self.seconds

    def line(self, name: str) -> str:
        slow = ", ".join(f"{k} {v:.3f}s" for k, v in sorted(self.slowest.items()))
        return (
            f"{name:<14} writes {self.ops['write']:>6}  eventual {self.ops['eventual']:>6}  "
            f"causal {self.ops['causal']:>6}  reads/s {self.reads_per_s:>8.0f}  "
            f"retried {self.retried:>4} (unreachable {self.unreachable:>3})  slowest: {slow}"
        )


def _shared_client(endpoints: list[str], victim: str) -> AsyncClient:
    c = AsyncClient(endpoints, timeout=TIMEOUT_S)
    # Its reads start on the victim (a client picks its replica at random): the case the
    # issue measured, where reads kept going back to the dead node.
    c._replica = victim
    return c


async def _phase(
    endpoints: list[str], victim: str, seconds: float, fault: Callable[[], None] | None = None
) -> Phase:
    """Fresh clients drive the load for ``seconds``: per kind one client shared by many
    callers (as `kvstore bench` uses it) and, for reads, one bound to each node with
    replica= (as Jepsen binds them). ``fault`` runs a third of the way in."""
    out = Phase(seconds)
    shared = SHARED_CALLERS
    writers = [AsyncClient(endpoints, timeout=TIMEOUT_S)]
    eventual = [_shared_client(endpoints, victim)]
    eventual += [AsyncClient(endpoints, timeout=TIMEOUT_S, replica=i) for i in range(3)]
    causal = [_shared_client(endpoints, victim)]
    causal += [AsyncClient(endpoints, timeout=TIMEOUT_S, replica=i) for i in range(3)]
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds

    async def timed(kind: str, call: Callable[[], Awaitable[object]]) -> object:
        t0 = loop.time()
        try:
            result = await call()
        except Exception as e:
            out.failures.append(f"{kind}: {type(e).__name__}: {e}")
            return None
        took = loop.time() - t0
        out.ops[kind] += 1
        out.slowest[kind] = max(out.slowest.get(kind, 0.0), took)
        return result

    async def writer(c: AsyncClient, rng: random.Random) -> None:
        while loop.time() < stop:
            await timed("write", lambda: c.put(rng.choice(KEYS), str(rng.random())))

    async def eventual_reader(c: AsyncClient, rng: random.Random) -> None:
        while loop.time() < stop:
            await timed("eventual", lambda: c.get(rng.choice(KEYS), read_mode="eventual"))

    async def causal_reader(c: AsyncClient, me: str, rng: random.Random) -> None:
        # Writes its own key now and then and must always read it back (read-your-writes
        # across replicas and failover), between reads of the shared keys.
        n = 0
        while loop.time() < stop:
            n += 1
            if n % 8 == 1:
                value = str(n).encode()
                if await timed("write", lambda v=value: c.put(me, v)) is None:
                    continue
                got = await timed("causal", lambda: c.get(me, read_mode="causal"))
                if got is not None and got != value:
                    out.failures.append(f"causal read of {me} gave {got!r}, wrote {value!r}")
            else:
                await timed("causal", lambda: c.get(rng.choice(KEYS), read_mode="causal"))

    async def inject() -> None:
        if fault is not None:
            await asyncio.sleep(seconds / 3)
            fault()

    rng = random.Random(7)

    def callers(i: int) -> range:
        return range(shared if i == 0 else BOUND_CALLERS)

    tasks = [writer(writers[0], random.Random(rng.random())) for _ in range(shared)]
    tasks += [
        eventual_reader(c, random.Random(rng.random()))
        for i, c in enumerate(eventual)
        for _ in callers(i)
    ]
    tasks += [
        causal_reader(c, f"causal-{i}-{j}", random.Random(rng.random()))
        for i, c in enumerate(causal)
        for j in callers(i)
    ]
    out.callers = len(tasks)
    try:
        await asyncio.gather(inject(), *tasks)
    finally:
        for c in [*writers, *eventual, *causal]:
            out.retried += c.retries.requests
            why = c.retries.reasons
            out.unreachable += why.get("stream broken", 0) + why.get("no answer", 0)
            await c.close()
    return out


def _check(name: str, phase: Phase, all_up: Phase, attempt_s: float, election_s: float) -> None:
    assert not phase.failures, f"{name}: {len(phase.failures)} failed: {phase.failures[:5]}"
    bound = election_s + attempt_s
    slow = {k: v for k, v in phase.slowest.items() if v > bound}
    assert not slow, f"{name}: requests slower than {bound:.2f}s: {slow}"
    # Once a client found the node down it stops choosing it: only the callers whose
    # request was already on its way there meet it.
    assert phase.unreachable <= phase.callers, (
        f"{name}: {phase.unreachable} attempts met an unreachable node ({phase.callers} callers)"
    )
    assert phase.reads_per_s >= all_up.reads_per_s / 2, (
        f"{name}: {phase.reads_per_s:.0f} reads/s, all up {all_up.reads_per_s:.0f}"
    )


def _node_down(tmp_path: Path, how: str, role: str = "follower") -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.wait_leader()
        victim = leader if role == "leader" else next(i for i in (3, 2, 1) if i != leader)
        eps = cluster.endpoints
        attempt_s = AsyncClient(eps, timeout=TIMEOUT_S).attempt_timeout

        async def preload() -> None:
            async with AsyncClient(eps, timeout=TIMEOUT_S) as c:
                await asyncio.gather(*(c.put(k, "0") for k in KEYS))

        asyncio.run(preload())
        proc = cluster.procs[victim]

        def fault() -> None:
            if how == "kill":
                cluster.kill(victim)
            else:
                proc.send_signal(signal.SIGSTOP)

        try:
            ep = cluster.endpoint(victim)
            all_up = asyncio.run(_phase(eps, ep, 2.0))
            during = asyncio.run(_phase(eps, ep, 3.0, fault))
            before = asyncio.run(_phase(eps, ep, 2.0))
            # A follower down costs no election; a leader down costs one, and Raft draws
            # each election timeout from [T, 2T), so one election may take up to 2T.
            election_s = ELECTION_TIMEOUT_S * (2 if role == "leader" else 1)
            print(f"\n{role} {victim}: {how}; bound {election_s + attempt_s:.2f}s")
            for name, p in (
                ("all up", all_up),
                (f"{how} during", during),
                (f"{how} before", before),
            ):
                print(p.line(name))
            _check("all up", all_up, all_up, attempt_s, election_s)
            _check(f"{how} during the load", during, all_up, attempt_s, election_s)
            _check(f"{how} before the load", before, all_up, attempt_s, election_s)
            if how == "kill":
                asyncio.run(_bound_client_returns_home(cluster, victim))
        finally:
            if how == "pause":
                proc.send_signal(signal.SIGCONT)


async def _bound_client_returns_home(cluster: LocalCluster, victim: int) -> None:
    """A client bound to a node (replica=) reads elsewhere while the node is down and from
    it again once it is back, as Jepsen's node-bound clients need."""
    home = cluster.endpoint(victim)
    async with AsyncClient(cluster.endpoints, timeout=TIMEOUT_S, replica=victim - 1) as c:
        assert await c.get(KEYS[0], read_mode="eventual") is not None
        assert c._first_endpoint(anywhere=True) != home  # it found the node down
        cluster.start(victim)
        t0 = time.monotonic()
        while c._first_endpoint(anywhere=True) != home:
            assert time.monotonic() - t0 < 20, f"the client bound to {home} never went back"
            assert await c.get(KEYS[0], read_mode="eventual") is not None
            await asyncio.sleep(0.05)
        assert await c.get(KEYS[0], read_mode="eventual") is not None


def test_killed_follower_costs_one_attempt_and_reads_move(tmp_path: Path) -> None:
    _node_down(tmp_path, "kill")


def test_paused_follower_costs_one_attempt_and_reads_move(tmp_path: Path) -> None:
    _node_down(tmp_path, "pause")


def test_paused_leader_costs_one_election_and_one_attempt(tmp_path: Path) -> None:
    _node_down(tmp_path, "pause", "leader")
