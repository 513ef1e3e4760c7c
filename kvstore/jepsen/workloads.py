"""Workloads: what the client processes do, and how each operation is recorded.

- ``register``: read / write / cas on a few keys, each key an independent register of small
  integers (values collide on purpose: it makes cas succeed and stale reads matter).
- ``append``: append unique integers to a few keys, each append a strong read then a cas
  of the list (retried while the compare fails); reads return the whole list. The final
  lists must hold every acknowledged append, each once, in an order that respects real time.
- ``lock``: workers take one lock and append their fencing token to a guarded resource
  (kvstore/jepsen/lock_workload.py).
- ``session``: each client writes an increasing counter to a key only it writes, and reads
  its own key and the others' in the session's read mode (causal): reads must never go
  backwards (monotonic reads) nor miss the client's own acknowledged write
  (read-your-writes).

Keys are spread over the key space (:func:`spread_key`): a run against a sharded cluster
(``--shards``, split at the default keys a..z) hits every shard, consecutive keys
different ones.

A worker is one logical client process with at most one operation in flight, recorded as
invoke then ok / fail (certainly not applied: the client said ``definite``) / info
(unknown). After an info the worker continues as a new process (process + concurrency), as
Jepsen does; ``process % concurrency`` names the worker (and its client session).
"""

from __future__ import annotations

import asyncio
import bisect
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvstore.jepsen.checker.models import ListAppendModel, Model, RegisterModel
from kvstore.jepsen.history import Event, EventType, Value


class Store(Protocol):
    """The slice of kvstore.client.AsyncClient the workloads use."""

    async def get(self, key: bytes | str, read_mode: str = "strong") -> bytes | None: ...

    async def put(self, key: bytes | str, value: bytes | str) -> object: ...

    async def cas(
        self, key: bytes | str, expected: bytes | str | None, new: bytes | str | None
    ) -> bool: ...


class DefiniteFailure(Exception):
    """The operation certainly did not take effect (e.g. an append whose cas kept failing)."""

    definite = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Invocation:
    f: str
    key: str
    value: Value = None


class Recorder:
    """Collects events with times in seconds since its creation (monotonic)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.t0 = clock()
        self.wall0 = time.time()  # to line the history up with the nodes' logs
        self.events: list[Event] = []

    def now(self) -> float:
        return self.clock() - self.t0

    def record(
        self,
        type: EventType,
        process: int,
        f: str,
        key: str | None,
        value: Value,
        error: str | None = None,
    ) -> None:
        self.events.append(
            Event(
                type=type, process=process, f=f, key=key, value=value, time=self.now(), error=error
            )
        )

    def insert(self, event: Event) -> None:
        """Adds an event stamped earlier (a fault that took a while to start), in time order."""
        bisect.insort(self.events, event, key=lambda e: e.time)


_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_STRIDE = 7
"""Coprime with 26: ``n -> n * 7 mod 26`` visits every letter, and consecutive keys are
7 letters apart, so with the default split keys of 4 shards (g, n, t) keys n and n + 1
always fall in different shards (and any 26 consecutive keys cover every shard of up to 26)."""


def spread_key(prefix: str, n: int) -> str:
    """The ``n``-th key of a family: a leading letter spreads keys over the default
    shard boundaries (which are single lowercase letters); the rest keeps keys unique."""
    return f"{_LETTERS[n * _STRIDE % len(_LETTERS)]}{prefix}{n}"


def _int(b: bytes | None) -> int | None:
    return None if b is None else int(b)


def _list(b: bytes | None) -> tuple[int, ...]:
    return tuple(int(x) for x in b.split(b",")) if b else ()


@dataclass(slots=True)
class KeyRing:
    """``slots`` keys in use at a time; a key retires after ``per_key`` operations and a
    fresh one takes its slot (as Jepsen's independent keys do). Short per-key histories
    keep the linearizability search small however long the run: the operations of unknown
    outcome, which the search may place anywhere, stay few per key."""

    prefix: str
    slots: int
    per_key: int = 250
    keys: list[str] = field(default_factory=list)
    _live: list[str] = field(default_factory=list)
    _used: dict[str, int] = field(default_factory=dict)
    _made: int = 0

    def __post_init__(self) -> None:
        for _ in range(self.slots):
            self._live.append(self._fresh())

    def _fresh(self) -> str:
        key = spread_key(self.prefix, self._made)
        self._made += 1
        self.keys.append(key)
        self._used[key] = 0
        return key

    def pick(self, rng: random.Random) -> str:
        i = rng.randrange(self.slots)
        key = self._live[i]
        self._used[key] += 1
        if self._used[key] >= self.per_key:
            self._live[i] = self._fresh()
        return key


class Workload(Protocol):
    name: str
    model: Model | None

    @property
    def keys(self) -> list[str]:
        """Every key the workload has used (the final reads read them all)."""
        ...

    def generate(self, worker: int, process: int, rng: random.Random) -> Invocation: ...

    async def execute(self, store: Store, inv: Invocation, read_mode: str) -> Value: ...

    def on_new_process(self, worker: int, process: int) -> None: ...


@dataclass(slots=True)
class RegisterWorkload:
    ring: KeyRing
    values: int = 5
    name: str = "register"
    model: Model | None = field(default_factory=RegisterModel)

    @property
    def keys(self) -> list[str]:
        return self.ring.keys

    def generate(self, worker: int, process: int, rng: random.Random) -> Invocation:
        key = self.ring.pick(rng)
        roll = rng.random()
        if roll < 0.5:
            return Invocation(f="read", key=key)
        if roll < 0.75:
            return Invocation(f="write", key=key, value=rng.randrange(self.values))
        return Invocation(
            f="cas", key=key, value=(rng.randrange(self.values), rng.randrange(self.values))
        )

    async def execute(self, store: Store, inv: Invocation, read_mode: str) -> Value:
        if inv.f == "read":
            return _int(await store.get(inv.key, read_mode))
        if inv.f == "write":
            await store.put(inv.key, str(inv.value))
            return inv.value
        expected, new = inv.value
        return await store.cas(inv.key, str(expected), str(new))

    def on_new_process(self, worker: int, process: int) -> None:
        pass


@dataclass(slots=True)
class AppendWorkload:
    ring: KeyRing
    attempts: int = 8
    name: str = "append"
    model: Model | None = field(default_factory=ListAppendModel)
    _next: int = 0

    @property
    def keys(self) -> list[str]:
        return self.ring.keys

    def generate(self, worker: int, process: int, rng: random.Random) -> Invocation:
        key = self.ring.pick(rng)
        if rng.random() < 0.3:
            return Invocation(f="read", key=key)
        self._next += 1
        return Invocation(f="append", key=key, value=self._next)

    async def execute(self, store: Store, inv: Invocation, read_mode: str) -> Value:
        if inv.f == "read":
            return _list(await store.get(inv.key, read_mode))
        for _ in range(self.attempts):
            try:
                cur = await store.get(inv.key, "strong")
            except Exception as e:
                raise DefiniteFailure(f"append not applied: {e}") from e
            new = b",".join(str(x).encode() for x in (*_list(cur), inv.value))
            try:
                swapped = await store.cas(inv.key, cur, new)
            except Exception as e:
                if is_definite(e):
                    raise DefiniteFailure(f"append not applied: {e}") from e
                raise  # the cas may have landed: unknown
            if swapped:
                return None
        raise DefiniteFailure(f"compare failed {self.attempts} times")

    def on_new_process(self, worker: int, process: int) -> None:
        pass


@dataclass(slots=True)
class SessionWorkload:
    """Per worker, a key only it writes; the key changes when the worker's process does."""

    concurrency: int
    name: str = "session"
    model: Model | None = None
    keys: list[str] = field(default_factory=list)
    owned: dict[int, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for w in range(self.concurrency):
            self.on_new_process(w, w)

    def generate(self, worker: int, process: int, rng: random.Random) -> Invocation:
        mine = self.owned[worker]
        roll = rng.random()
        if roll < 0.35:
            self.counters[mine] += 1
            return Invocation(f="write", key=mine, value=self.counters[mine])
        if roll < 0.6:
            return Invocation(f="read", key=mine)
        return Invocation(f="read", key=rng.choice(self.keys))

    async def execute(self, store: Store, inv: Invocation, read_mode: str) -> Value:
        if inv.f == "read":
            return _int(await store.get(inv.key, read_mode))
        await store.put(inv.key, str(inv.value))
        return inv.value

    def on_new_process(self, worker: int, process: int) -> None:
        # after an unknown write the key's version order is no longer known to the writer
        key = spread_key("s", process)
        self.owned[worker] = key
        self.counters[key] = 0
        self.keys.append(key)


def make(name: str, *, keys: int, concurrency: int, per_key: int = 250) -> Workload:
    """``keys``: keys in use at a time; each serves ``per_key`` operations, then retires."""
    if name == "register":
        return RegisterWorkload(ring=KeyRing(prefix="r", slots=keys, per_key=per_key))
    if name == "append":
        return AppendWorkload(ring=KeyRing(prefix="a", slots=keys, per_key=per_key))
    if name == "session":
        return SessionWorkload(concurrency=concurrency)
    if name == "lock":
        from kvstore.jepsen.lock_workload import LockWorkload

        return LockWorkload()
    if name == "watch":
        from kvstore.jepsen.watch_workload import WatchWorkload

        return WatchWorkload()
    raise ValueError(f"unknown workload {name!r}")


def is_definite(e: BaseException) -> bool:
    return getattr(e, "definite", False) is True


async def run_worker(
    *,
    worker: int,
    concurrency: int,
    workload: Workload,
    store: Store,
    recorder: Recorder,
    read_mode: str,
    until: float,
    op_timeout: float,
    rng: random.Random,
    pace: float = 0.05,
    stop: asyncio.Event | None = None,
) -> None:
    """One logical client until ``until`` (recorder time); ``pace``: mean pause between ops."""
    process = worker
    while recorder.now() < until and not (stop is not None and stop.is_set()):
        inv = workload.generate(worker, process, rng)
        recorder.record("invoke", process, inv.f, inv.key, inv.value)
        try:
            out = await asyncio.wait_for(workload.execute(store, inv, read_mode), op_timeout)
        except Exception as e:
            definite = is_definite(e)
            if inv.f == "read":
                definite = True  # a read that did not answer changed nothing
            err = f"{type(e).__name__}: {e}"[:200]
            recorder.record("fail" if definite else "info", process, inv.f, inv.key, inv.value, err)
            if not definite:
                process += concurrency
                workload.on_new_process(worker, process)
        else:
            # What an ok records: the result where it says more than the invocation (a
            # workload lists its own such ops in ``returns``).
            returns = ("read", "cas", "hold", *getattr(workload, "returns", ()))
            value = out if inv.f in returns else inv.value
            recorder.record("ok", process, inv.f, inv.key, value)
        if pace > 0:
            await asyncio.sleep(rng.uniform(0, 2 * pace))


async def final_reads(
    *,
    keys: Sequence[str],
    workload: Workload,
    store: Store,
    recorder: Recorder,
    process: int,
    deadline: float,
    op_timeout: float,
) -> dict[str, Value]:
    """A strong read of every key, retried until it answers or ``deadline`` (recorder time)."""
    found: dict[str, Value] = {}
    for key in keys:
        while recorder.now() < deadline:
            inv = Invocation(f="read", key=key)
            recorder.record("invoke", process, "read", key, None)
            try:
                out = await asyncio.wait_for(workload.execute(store, inv, "strong"), op_timeout)
            except Exception as e:
                recorder.record("fail", process, "read", key, None, f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.2)
                continue
            recorder.record("ok", process, "read", key, out)
            found[key] = out
            break
    return found
