"""The ``member`` nemesis' hands: membership changes through the admin API, as an operator.

Removing a node: ask the leader to remove it (retrying while leadership moves), then stop
the node and wipe its data directory (a removed member must not come back with its old
state). Adding it back: start it empty with ``--join`` (it takes no part until the leader
sends it a snapshot), add it as a learner, wait until it replicates, promote it.

Invariant: a node is wiped only once the cluster has dropped it from its membership; if the
removal's outcome is unknown (every try timed out), adding back first asks the cluster
whether it is still a voter, and then leaves it alone. Calls are synchronous (the nemesis
runs in a thread); each makes its own event loop and client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from kvstore.jepsen.cluster import ClientTLS, endpoint
from kvstore.jepsen.hosts import Host

T = TypeVar("T")


class JoinableCluster(Protocol):
    hosts: list[Host]

    @property
    def client_options(self) -> ClientTLS: ...

    def forget(self, host: Host) -> None: ...

    def start(self, host: Host) -> None: ...


async def _retry(call: Callable[[], Awaitable[T]], seconds: float) -> T:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await call()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


class Members:
    """Removes and re-adds nodes of a running cluster (see the module docstring)."""

    def __init__(self, cluster: JoinableCluster, op_timeout: float = 2.0) -> None:
        self.cluster = cluster
        self.op_timeout = op_timeout

    def _with_client(self, hosts: Sequence[Host], work: Callable[[Any], Awaitable[T]]) -> T:
        from kvstore.client import AsyncClient

        async def go() -> T:
            client = AsyncClient(
                [endpoint(h) for h in hosts],
                timeout=self.op_timeout,
                **self.cluster.client_options,
            )
            try:
                return await work(client)
            finally:
                await asyncio.wait_for(client.close(), 2.0)

        return asyncio.run(go())

    def remove(self, host: Host) -> str:
        """Removes ``host`` from the membership, then stops and wipes it."""
        try:  # all of them: the node removed may be the leader, which proposes its removal
            out = self._with_client(
                self.cluster.hosts, lambda c: _retry(lambda: c.remove_member(host.index), 15.0)
            )
        except Exception as e:
            return f"remove n{host.index}: not confirmed ({type(e).__name__})"
        self.cluster.forget(host)
        return f"removed n{host.index} (voters {out['voters']}), wiped its data"

    def add_back(self, host: Host) -> str:
        """Adds ``host`` back, empty, as a learner, then promotes it once it replicates."""
        others = [h for h in self.cluster.hosts if h != host]

        async def work(c: Any) -> str:
            members = await _retry(c.members, 20.0)
            if host.index in members["voters"]:
                return f"n{host.index} still a voter"
            if host.index not in members["learners"]:
                self.cluster.forget(host)
                self.cluster.start(host)
                await _retry(lambda: c.add_learner(host.index, endpoint(host)), 20.0)
            await asyncio.sleep(1.0)  # let the leader send it a snapshot
            out = await _retry(lambda: c.promote(host.index), 30.0)
            return f"n{host.index} joined as a learner, promoted (voters {out['voters']})"

        try:
            return self._with_client(others, work)
        except Exception as e:
            return f"add back n{host.index}: not confirmed ({type(e).__name__}: {e})"
