"""The lease, lock, election, watch and compact calls of AsyncClient (etcd's lease,
concurrency and watch APIs), mixed into it.

Rule: each call is a thin entry into the module that does the work (_lease.py, lock.py,
election.py, _watch.py, _history.py; docs/leases.md, docs/watch.md), reached through the
same AsyncClient; the names and signatures here are the client's public contract
(Client in _sync.py mirrors them).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

from kvstore.client import _lease
from kvstore.client import lock as _lock
from kvstore.client._history import compact_history
from kvstore.client._limits import to_bytes
from kvstore.client._watch import AsyncWatcher, open_watch
from kvstore.client.election import AsyncElection

if TYPE_CHECKING:
    from kvstore.client._async import AsyncClient


class LeaseWatchCalls:
    """Mixed into AsyncClient only."""

    @property
    def _client(self) -> AsyncClient:
        return cast("AsyncClient", self)

    async def grant(self, ttl: float) -> int:
        """A lease of ``ttl`` seconds (at least 1); returns its id."""
        return await _lease.grant(self._client, ttl)

    async def keep_alive(self, lease: int) -> float:
        """Renew ``lease`` once; returns its TTL (s). NotFound when it is gone."""
        return await _lease.keep_alive(self._client, lease)

    def keep_alive_background(self, lease: int, ttl: float) -> _lease.KeepAlive:
        """Start renewing ``lease`` every ttl/3 s; ``.stop()`` ends it, ``.lost`` is set
        once the lease is gone."""
        return _lease.KeepAlive(self._client, lease, ttl).start()

    async def revoke(self, lease: int) -> bool:
        """Revoke ``lease``, deleting its keys; False when it did not exist."""
        return await _lease.revoke(self._client, lease)

    async def time_to_live(self, lease: int, keys: bool = False) -> _lease.LeaseInfo | None:
        return await _lease.time_to_live(self._client, lease, keys)

    async def leases(self) -> list[_lease.LeaseInfo]:
        return await _lease.leases(self._client)

    @contextlib.asynccontextmanager
    async def lock(
        self, name: bytes | str, ttl: float = 10.0, timeout: float | None = None
    ) -> AsyncIterator[_lock.Held]:
        """Hold the lock ``name`` (kvstore/client/lock.py): waits for it (LockTimeout after
        ``timeout`` s), keeps its lease alive while held, releases it on exit. Pass
        ``.token`` (the fencing token) to whatever the lock guards."""
        held = await _lock.acquire(
            self._client, _lock.lock_key(name), _lock.unique_value(), ttl, timeout
        )
        try:
            yield held
        finally:
            await _lock.release(self._client, held)

    def election(self, name: bytes | str, ttl: float = 10.0) -> AsyncElection:
        """A leader election ``name`` (kvstore/client/election.py)."""
        return AsyncElection(self._client, name, ttl)

    def watch(
        self,
        key: bytes | str,
        prefix: bool = False,
        range_end: bytes | str | None = None,
        start_revision: int | None = None,
        *,
        prev_kv: bool = False,
        progress_notify: bool = False,
        progress_interval: float = 1.0,
    ) -> AsyncWatcher:
        """Changes of ``key`` (``prefix``: of every key starting with it; ``range_end``:
        of [key, range_end), b"\\0" to the end) as an async iterator of WatchEvent, from
        ``start_revision`` (None: from now) in each shard's revision order, resumed on
        another node from the last revision seen when a stream breaks (no gap, no
        duplicate). ``progress_notify``: also WatchProgress items (every change up to
        their revision was yielded; at least every ``progress_interval`` s while idle).
        Raises Compacted when the start revision is no longer held (docs/watch.md).
        Close it (``async with`` or ``close()``) when done."""
        return open_watch(
            self._client,
            to_bytes(key),
            prefix=prefix,
            range_end=None if range_end is None else to_bytes(range_end),
            start_revision=start_revision,
            prev_kv=prev_kv,
            progress_notify=progress_notify,
            progress_interval=progress_interval,
        )

    async def compact(self, revision: int) -> dict[int, int]:
        """Drop history up to ``revision`` in every shard (a shard whose revision is
        lower compacts to its own); returns each shard's compacted revision."""
        return await compact_history(self._client, revision)
