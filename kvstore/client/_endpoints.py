"""Endpoint health: which of the client's nodes it should send requests to now.

Rule this module keeps: an endpoint is *down* from the first sign that it cannot answer
(its stream broke or could not connect, or a whole attempt got no answer on a stream that
heard nothing else meanwhile) until a probe gets an answer from it (a standard gRPC health
check with a short deadline, repeated in the background with backoff) or a real request
does. ``pick`` skips down endpoints while any other endpoint is up, so a dead or paused
node costs each caller at most the one attempt that found it out. Nothing here knows
leaders, read modes or keys: routing (leader, read replica, later shards) is built on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Collection, Sequence

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvstore.security.tls import ChannelTLS, open_channel

PROBE_FIRST_S = 0.05
"""Delay before the first probe of an endpoint that just went down."""
PROBE_MAX_INTERVAL_S = 1.0
"""Probes back off up to this interval: a node back from a restart is used again within it."""
PROBE_TIMEOUT_S = 0.5
"""How long a probe waits for an answer; a paused node never answers."""

_PROBE_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class Endpoints:
    """The health of a set of endpoints, and the choice among them.

    Used from one event loop. ``mark_down`` starts a background probe task per down
    endpoint; ``close`` stops them.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        probe_timeout: float = PROBE_TIMEOUT_S,
        rng: random.Random | None = None,
        tls: ChannelTLS | None = None,
    ) -> None:
        self.tls = tls
        self._order: list[str] = list(dict.fromkeys(endpoints))
        self._rng = rng or random.Random()
        self._next = self._rng.randrange(len(self._order)) if self._order else 0
        self._down: dict[str, str] = {}
        """Down endpoint -> why it was marked down."""
        self._probes: dict[str, asyncio.Task[None]] = {}
        self.probe_timeout = probe_timeout
        self._closed = False

    def is_up(self, endpoint: str) -> bool:
        """Whether ``endpoint`` is not known to be down (also for one outside the list, such
        as a leader hint: its health is tracked, but ``pick`` never offers it)."""
        return endpoint not in self._down

    def up(self) -> list[str]:
        return [e for e in self._order if e not in self._down]

    def why_down(self, endpoint: str) -> str | None:
        return self._down.get(endpoint)

    def pick(self, exclude: Collection[str] = ()) -> str:
        """The next endpoint in round-robin order that is up and not in ``exclude``; else
        the next that is up; else (every endpoint down) the next in order, so a caller
        keeps trying while the probes wait for a node to come back."""
        n = len(self._order)
        down = self._down
        for skip_down, skip_excluded in ((True, True), (True, False), (False, True)):
            for i in range(n):
                e = self._order[(self._next + i) % n]
                if (skip_down and e in down) or (skip_excluded and e in exclude):
                    continue
                self._next = (self._next + i + 1) % n
                return e
        if n:
            e = self._order[self._next % n]
            self._next = (self._next + 1) % n
            return e
        raise ValueError("no endpoints")

    def mark_down(self, endpoint: str, why: str) -> None:
        if self._closed or endpoint in self._down:
            return
        self._down[endpoint] = why
        if endpoint not in self._probes:
            self._probes[endpoint] = asyncio.get_running_loop().create_task(
                self._probe(endpoint), name=f"kvstore-probe-{endpoint}"
            )

    def mark_up(self, endpoint: str) -> None:
        """An answer came from ``endpoint``: it is reachable (cheap when it already was)."""
        if self._down.pop(endpoint, None) is not None:
            t = self._probes.pop(endpoint, None)
            if t is not None and t is not asyncio.current_task():
                t.cancel()

    async def _probe(self, endpoint: str) -> None:
        """Health-check ``endpoint`` until it answers, then mark it up."""
        delay = PROBE_FIRST_S
        try:
            async with open_channel(endpoint, _PROBE_CHANNEL_OPTIONS, self.tls) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                while endpoint in self._down:
                    await asyncio.sleep(delay * self._rng.uniform(0.8, 1.2))
                    delay = min(delay * 2, PROBE_MAX_INTERVAL_S)
                    try:
                        await stub.Check(
                            health_pb2.HealthCheckRequest(service=""),
                            timeout=self.probe_timeout,
                            wait_for_ready=True,
                        )
                    except grpc.aio.AioRpcError as e:
                        # Any status the server itself sent means the node answers (a full
                        # store says NOT_SERVING and still serves reads); only transport
                        # failures and our own deadline mean it is still away.
                        if e.code() not in (
                            grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            grpc.StatusCode.CANCELLED,
                        ):
                            break
                        continue
                    break
        finally:
            if self._probes.get(endpoint) is asyncio.current_task():
                del self._probes[endpoint]
        self.mark_up(endpoint)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._probes.values())
        self._probes.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
