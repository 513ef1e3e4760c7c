"""Client: the synchronous face of AsyncClient, running it on a private event-loop thread.

Rule: every method blocks the caller only; the loop thread is the sole owner of
the gRPC channels, and ``close()`` stops it (context manager or explicit).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from kvstore._pb import kv_pb2
from kvstore.client import lock as _lock
from kvstore.client._async import DEFAULT_ENDPOINTS, AsyncClient
from kvstore.client._attempts import RetryStats
from kvstore.client._lease import KeepAlive, LeaseInfo
from kvstore.client._watch import AsyncWatcher, WatchEvent, WatchProgress
from kvstore.client.election import AsyncElection, Leader
from kvstore.client.lock import Held
from kvstore.security.tls import PathOrPem, client_tls

T = TypeVar("T")


async def _drain() -> None:
    """Let gRPC's own bookkeeping tasks finish before the loop closes."""
    me = asyncio.current_task()
    rest = [t for t in asyncio.all_tasks() if t is not me]
    for t in rest:
        t.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


class Client:
    def __init__(
        self,
        endpoints: Sequence[str] | str = DEFAULT_ENDPOINTS,
        *,
        timeout: float = 5.0,
        client_id: int | None = None,
        replica: int | None = None,
        attempt_timeout: float | None = None,
        cacert: PathOrPem = None,
        cert: PathOrPem = None,
        key: PathOrPem = None,
    ) -> None:
        """The options are AsyncClient's."""
        client_tls(cacert, cert, key)  # a bad file fails here, before the loop thread starts
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="kvstore-client", daemon=True
        )
        self._thread.start()
        self._timeout = timeout
        self._async = self._run(
            self._make(
                endpoints,
                timeout=timeout,
                client_id=client_id,
                replica=replica,
                attempt_timeout=attempt_timeout,
                cacert=cacert,
                cert=cert,
                key=key,
            )
        )

    @staticmethod
    async def _make(endpoints: Sequence[str] | str, **options: Any) -> AsyncClient:
        # Built on the loop thread: the client's channels and tasks belong to that loop.
        return AsyncClient(endpoints, **options)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.close())
        self._run(_drain())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @property
    def causal_token(self) -> int:
        """One hybrid clock time for every shard; hand it to another client (set it
        there) to pass on what this one has seen."""
        return self._async.causal_token

    @causal_token.setter
    def causal_token(self, t: int) -> None:
        self._async.causal_token = t

    @property
    def retries(self) -> RetryStats:
        return self._async.retries

    def put(self, key: bytes | str, value: bytes | str, lease: int = 0) -> int:
        return self._run(self._async.put(key, value, lease))

    def get(self, key: bytes | str, read_mode: str = "strong", revision: int = 0) -> bytes | None:
        return self._run(self._async.get(key, read_mode=read_mode, revision=revision))

    def get_kv(
        self, key: bytes | str, read_mode: str = "strong", revision: int = 0
    ) -> kv_pb2.KeyValue | None:
        return self._run(self._async.get_kv(key, read_mode=read_mode, revision=revision))

    def compact(self, revision: int) -> dict[int, int]:
        return self._run(self._async.compact(revision))

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
    ) -> Watcher:
        """AsyncClient.watch as a blocking iterator (close it, or use ``with``)."""
        aw = self._async.watch(
            key,
            prefix,
            range_end,
            start_revision,
            prev_kv=prev_kv,
            progress_notify=progress_notify,
            progress_interval=progress_interval,
        )
        return Watcher(self, aw)

    def delete(self, key: bytes | str) -> bool:
        return self._run(self._async.delete(key))

    def cas(
        self,
        key: bytes | str,
        expected: bytes | str | None,
        new: bytes | str | None,
        lease: int = 0,
    ) -> bool:
        return self._run(self._async.cas(key, expected, new, lease))

    def cas_response(
        self,
        key: bytes | str,
        expected: bytes | str | None,
        new: bytes | str | None,
        lease: int = 0,
    ) -> kv_pb2.CasResponse:
        return self._run(self._async.cas_response(key, expected, new, lease))

    # -- leases (see AsyncClient) ---------------------------------------------------
    def grant(self, ttl: float) -> int:
        return self._run(self._async.grant(ttl))

    def keep_alive(self, lease: int) -> float:
        return self._run(self._async.keep_alive(lease))

    def keep_alive_background(self, lease: int, ttl: float) -> SyncKeepAlive:
        """Renew ``lease`` on the client's loop thread until ``.stop()``."""

        async def start() -> KeepAlive:
            return self._async.keep_alive_background(lease, ttl)

        return SyncKeepAlive(self, self._run(start()))

    def revoke(self, lease: int) -> bool:
        return self._run(self._async.revoke(lease))

    def time_to_live(self, lease: int, keys: bool = False) -> LeaseInfo | None:
        return self._run(self._async.time_to_live(lease, keys))

    def leases(self) -> list[LeaseInfo]:
        return self._run(self._async.leases())

    @contextlib.contextmanager
    def lock(
        self, name: bytes | str, ttl: float = 10.0, timeout: float | None = None
    ) -> Iterator[Held]:
        """Hold the lock ``name`` while the block runs; see AsyncClient.lock. Pass
        ``.token`` (the fencing token) to whatever the lock guards."""
        key, value = _lock.lock_key(name), _lock.unique_value()
        held = self._run(_lock.acquire(self._async, key, value, ttl, timeout))
        try:
            yield held
        finally:
            self._run(_lock.release(self._async, held))

    def election(self, name: bytes | str, ttl: float = 10.0) -> Election:
        """A leader election ``name`` (kvstore/client/election.py)."""
        return Election(self, self._async.election(name, ttl))

    def scan(
        self,
        start: bytes | str = b"",
        end: bytes | str = b"",
        limit: int = 0,
        read_mode: str = "strong",
    ) -> list[tuple[bytes, bytes]]:
        return self._run(self._async.scan(start, end, limit, read_mode=read_mode))

    def status(self, sizes: bool = False) -> list[dict[str, Any]]:
        return self._run(self._async.status(sizes))

    def shards(self) -> list[dict[str, Any]]:
        return self._run(self._async.shards())

    def split_shard(self, shard: int, at: bytes | str | None = None) -> dict[str, Any]:
        return self._run(self._async.split_shard(shard, at))

    def merge_shard(self, shard: int) -> dict[str, Any]:
        return self._run(self._async.merge_shard(shard))

    def transfer_leader(self, to: int, group: int = 1) -> int:
        return self._run(self._async.transfer_leader(to, group))

    def add_learner(self, node_id: int, endpoint: str) -> dict[str, Any]:
        return self._run(self._async.add_learner(node_id, endpoint))

    def promote(self, node_id: int) -> dict[str, Any]:
        return self._run(self._async.promote(node_id))

    def remove_member(self, node_id: int) -> dict[str, Any]:
        return self._run(self._async.remove_member(node_id))

    def demote(self, node_id: int) -> dict[str, Any]:
        return self._run(self._async.demote(node_id))

    def replace_member(self, old_id: int, new_id: int) -> dict[str, Any]:
        return self._run(self._async.replace_member(old_id, new_id))

    def members(self) -> dict[str, Any]:
        return self._run(self._async.members())


class SyncKeepAlive:
    """A background keep-alive of a sync Client (runs on its loop thread)."""

    def __init__(self, client: Client, task: KeepAlive) -> None:
        self._client = client
        self.task = task

    @property
    def lost(self) -> bool:
        """The lease is gone (or could not be renewed for a whole TTL)."""
        return self.task.lost.is_set()

    @property
    def lease(self) -> int:
        return self.task.lease

    def stop(self) -> None:
        if not self._client._loop.is_closed():
            self._client._run(self.task.stop())


class Election:
    """A sync Client's leader election (see AsyncElection)."""

    def __init__(self, client: Client, inner: AsyncElection) -> None:
        self._client = client
        self.inner = inner

    def campaign(self, value: bytes | str, timeout: float | None = None) -> int:
        """Block until this candidate leads; returns the term's fencing token."""
        return self._client._run(self.inner.campaign(value, timeout))

    @property
    def leading(self) -> bool:
        return self.inner.leading

    def resign(self) -> None:
        self._client._run(self.inner.resign())

    def leader(self) -> Leader | None:
        return self._client._run(self.inner.leader())

    def observe(self, poll: float = 0.2) -> Iterator[Leader | None]:
        """AsyncElection.observe as a blocking iterator, run on the client's loop thread
        (close it to end its watch)."""
        it = self.inner.observe(poll)

        async def step() -> Leader | None:
            return await anext(it)

        async def close() -> None:
            if isinstance(it, AsyncGenerator):
                await it.aclose()

        try:
            while True:
                try:
                    yield self._client._run(step())
                except StopAsyncIteration:
                    return
        finally:
            if not self._client._loop.is_closed():
                self._client._run(close())


class Watcher:
    """A blocking iterator over an AsyncWatcher running on the client's loop thread."""

    def __init__(self, client: Client, aw: AsyncWatcher) -> None:
        self._client = client
        self._aw = aw
        self._fut: asyncio.Future[WatchEvent | WatchProgress] | None = None
        """The item being waited for (a ``next`` that timed out leaves it running)."""

    def __iter__(self) -> Watcher:
        return self

    def __next__(self) -> WatchEvent | WatchProgress:
        try:
            return self._client._run(self._pending())
        except StopAsyncIteration:
            raise StopIteration from None

    def next(self, timeout: float) -> WatchEvent | WatchProgress | None:
        """The next item, or None when none came within ``timeout`` seconds."""

        async def one() -> WatchEvent | WatchProgress | None:
            try:
                return await asyncio.wait_for(asyncio.shield(self._pending()), timeout)
            except TimeoutError:
                return None

        return self._client._run(one())

    async def _pending(self) -> WatchEvent | WatchProgress:
        fut = self._fut
        if fut is None:
            fut = self._fut = asyncio.ensure_future(self._aw.__anext__())
        try:
            return await fut
        finally:
            if fut.done():
                self._fut = None

    @property
    def pieces(self) -> list[Any]:
        return self._aw.pieces

    def close(self) -> None:
        if not self._client._loop.is_closed():
            self._client._run(self._aw.close())

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
