"""Client side of Watch: one stream per shard the watched range touches, resumed on any
replica from the last revision seen, merged into one iterator.

Rules:
- A watched range is kept as pieces, each inside one shard, each with the next revision
  it needs (``next_rev``). A piece's events are handed on in the order its stream sent
  them (its shard's revision order), only when complete (every event of a revision;
  ``fragment`` messages are held back) and only above what was already handed on, so a
  resumed stream never yields a duplicate. Pieces of different shards interleave as
  they arrive: shards count revisions independently, so there is no global order to
  give (docs/watch.md).
- A broken stream, a replica without a leader, or a node that went away: the piece
  resumes at ``next_rev`` on the next replica (leader first), at once, then with
  backoff. A stale route (split, merge, move): the map is refreshed and the piece is cut
  along the shards that now hold it, each part resuming at the same ``next_rev``.
- A compacted start is an error only when every replica of the shard says so (a replica
  that installed a snapshot holds less history than its peers): the iterator then
  raises Compacted naming the oldest revision available.
- At most MAX_QUEUED items wait for the caller: a stream whose items do not fit stops
  being read until they do (gRPC flow control then holds the node's stream too), so a
  caller slower than the watched range's writes holds the client's memory bounded
  instead of queueing every event of the range until the process runs out of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import grpc.aio

from kvstore._pb import kv_pb2, kv_pb2_grpc
from kvstore.client._stream import CHANNEL_OPTIONS
from kvstore.client.errors import Compacted, InvalidArgument, KVError, from_code
from kvstore.security.tls import open_channel
from kvstore.shard.descriptor import Descriptor

if TYPE_CHECKING:
    from kvstore.client._async import AsyncClient

MAX_QUEUED = 1000
"""Items (events, progress) an AsyncWatcher holds for its caller at most."""
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str
    """"put" or "delete"."""
    key: bytes
    value: bytes
    """The new value (b"" for a delete)."""
    revision: int
    """The change's revision in its shard."""
    shard: int
    """The shard (consensus group) the revision counts in (1 on an unsharded cluster)."""
    kv: kv_pb2.KeyValue
    prev_kv: kv_pb2.KeyValue | None = None


@dataclass(frozen=True, slots=True)
class WatchProgress:
    """Every change of ``[start, end)`` in ``shard`` up to ``revision`` has been
    yielded (end b"": to the end of the key space)."""

    revision: int
    shard: int
    start: bytes
    end: bytes


@dataclass(slots=True)
class _Piece:
    lo: bytes
    hi: bytes
    """b"": to the end of the key space."""
    next_rev: int
    """The next revision this piece needs (0: from now, not started yet)."""
    shard: int = 0
    compacted: dict[str, int] = field(default_factory=dict)
    """Endpoints that answered 'compacted' at this next_rev, and what they hold above."""


def range_of(key: bytes, prefix: bool, range_end: bytes | None) -> tuple[bytes, bytes]:
    """[lo, hi) of a watch (hi b"": to the end)."""
    if prefix and range_end is not None:
        raise InvalidArgument("give prefix or range_end, not both")
    if prefix:
        return key, prefix_end(key)
    if range_end is None:
        return key, key + b"\0"
    if range_end == b"\0":
        return key, b""
    if range_end <= key:
        raise InvalidArgument(f"range_end {range_end!r} must be above key {key!r}")
    return key, range_end


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key starting with ``prefix`` (b"": none, to the end)."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return b""
    p[-1] += 1
    return bytes(p)


def _wire_end(lo: bytes, hi: bytes) -> bytes:
    if not hi:
        return b"\0"
    if hi == lo + b"\0":
        return b""
    return hi


def _clip(lo: bytes, hi: bytes, d: Descriptor) -> tuple[bytes, bytes]:
    a = max(lo, d.start)
    if not d.end:
        b = hi
    elif not hi:
        b = d.end
    else:
        b = min(hi, d.end)
    return a, b


class AsyncWatcher:
    """An async iterator of WatchEvent (and WatchProgress when asked for)."""

    def __init__(
        self,
        client: AsyncClient,
        lo: bytes,
        hi: bytes,
        *,
        start_revision: int,
        prev_kv: bool,
        progress_notify: bool,
        progress_interval: float,
    ) -> None:
        self._client = client
        self._lo, self._hi = lo, hi
        self._start = start_revision
        self._prev_kv = prev_kv
        self._progress_notify = progress_notify
        self._interval_ms = max(1, int(progress_interval * 1000))
        self._queue: asyncio.Queue[WatchEvent | WatchProgress | BaseException] = asyncio.Queue(
            MAX_QUEUED
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._started = False
        self._closed = False
        self.pieces: list[_Piece] = []
        """The watched range as per-shard pieces, each with the next revision it needs."""

    def __aiter__(self) -> AsyncWatcher:
        return self

    async def __anext__(self) -> WatchEvent | WatchProgress:
        if self._closed:
            raise StopAsyncIteration
        if not self._started:
            self._started = True
            await self._begin()
        item = await self._queue.get()
        if isinstance(item, BaseException):
            await self.close()
            raise item
        return item

    async def __aenter__(self) -> AsyncWatcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close()

    # -- the pieces -------------------------------------------------------------------------
    async def _begin(self) -> None:
        c = self._client
        pieces = [_Piece(self._lo, self._hi, self._start)]
        if await c._sharded():
            pieces = await self._cut(pieces[0])
        for p in pieces:
            self._spawn(p)

    def _spawn(self, piece: _Piece) -> None:
        self.pieces.append(piece)
        task = asyncio.get_running_loop().create_task(self._follow(piece))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cut(self, piece: _Piece) -> list[_Piece]:
        """``piece`` along the shards the client's map says hold it (fetching the map
        when it has a hole there)."""
        c = self._client
        router = c._router
        for attempt in range(50):
            shards = router.cache.map.overlapping(piece.lo, piece.hi)
            if _tiles(shards, piece.lo, piece.hi):
                out = []
                for d in shards:
                    a, b = _clip(piece.lo, piece.hi, d)
                    out.append(_Piece(a, b, piece.next_rev, d.id))
                return out
            with contextlib.suppress(KVError):
                await router.fetch(asyncio.get_running_loop().time() + c.timeout)
            await asyncio.sleep(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**attempt))
        raise KVError(f"no shard map covers {piece.lo!r}..{piece.hi!r}")

    def _endpoints(self, piece: _Piece) -> list[str]:
        c = self._client
        if piece.shard:
            d = c._router.cache.map.get(piece.shard)
            eps = c._router.cache.endpoints(d) if d is not None else []
        else:
            eps = [e for e in [c._leader] if e] + list(c.endpoints)
        eps = list(dict.fromkeys(eps)) or list(c.endpoints)
        return sorted(eps, key=lambda e: not c._health.is_up(e))

    def _stub(self, endpoint: str) -> kv_pb2_grpc.KVStub:
        ch = self._channels.get(endpoint)
        if ch is None:
            ch = self._channels[endpoint] = open_channel(
                endpoint, CHANNEL_OPTIONS, self._client.tls
            )
        return kv_pb2_grpc.KVStub(ch)

    async def _follow(self, piece: _Piece) -> None:
        try:
            await self._follow_piece(piece)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            await self._queue.put(e)

    async def _follow_piece(self, piece: _Piece) -> None:
        c = self._client
        turn = 0
        failures = 0
        while not self._closed:
            if failures:
                pause = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** min(failures - 1, 8))
                await asyncio.sleep(random.uniform(0.5, 1.0) * pause)
            eps = self._endpoints(piece)
            endpoint = eps[turn % len(eps)]
            d = c._router.cache.map.get(piece.shard) if piece.shard else None
            req = kv_pb2.WatchRequest(
                key=piece.lo,
                range_end=_wire_end(piece.lo, piece.hi),
                start_revision=piece.next_rev,
                prev_kv=self._prev_kv,
                progress_interval_ms=self._interval_ms,
                shard=piece.shard,
                shard_version=d.epoch.version if d is not None else 0,
            )
            outcome = await self._stream(piece, endpoint, req)
            if outcome == "moved":
                # Cut the piece along the shards that hold it now; this task keeps
                # the first part.
                parts = await self._cut(piece)
                first, rest = parts[0], parts[1:]
                piece.lo, piece.hi, piece.shard = first.lo, first.hi, first.shard
                piece.compacted.clear()
                for p in rest:
                    self._spawn(p)
                turn, failures = 0, 0
                continue
            if outcome == "compacted":
                if all(e in piece.compacted for e in eps):
                    floor = min(piece.compacted.values())
                    raise Compacted(
                        f"revision {piece.next_rev} of shard {piece.shard or 1} is compacted: "
                        f"the oldest available revision is {floor + 1}",
                        compact_revision=floor,
                    )
                turn += 1
                continue
            if outcome == "ok":
                failures = 0
            else:
                failures += 1
            turn += 1

    async def _stream(self, piece: _Piece, endpoint: str, req: kv_pb2.WatchRequest) -> str:
        """Run one stream; returns why it ended: "moved", "compacted", "ok" (it ran
        and then ended), "failed"."""
        c = self._client
        router = c._router
        got = False
        pending: list[kv_pb2.Event] = []
        try:
            call = self._stub(endpoint).Watch(req)
            async for resp in call:
                if resp.HasField("error"):
                    err = resp.error
                    if err.compact_revision:
                        piece.compacted[endpoint] = err.compact_revision
                        return "compacted"
                    if err.stale_route:
                        if not router.cache.learn(err.shards):
                            with contextlib.suppress(KVError):
                                await router.fetch(asyncio.get_running_loop().time() + c.timeout)
                        return "moved"
                    if err.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]:
                        raise from_code(err.code, err.message, definite=True)
                    return "ok" if got else "failed"
                if not got:
                    got = True
                    c._health.mark_up(endpoint)
                    piece.compacted.clear()
                pending.extend(resp.events)
                if resp.fragment:
                    continue
                shard = resp.header.group or piece.shard or 1
                for ev in pending:
                    rev = ev.kv.mod_revision
                    if piece.next_rev and rev < piece.next_rev:
                        continue  # sent again after a resume
                    await self._queue.put(_event(ev, shard))
                nothing = not pending
                pending = []
                if resp.progress_revision + 1 > piece.next_rev:
                    piece.next_rev = resp.progress_revision + 1
                if self._progress_notify and nothing:
                    await self._queue.put(
                        WatchProgress(piece.next_rev - 1, shard, piece.lo, piece.hi)
                    )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(e.details() or "invalid watch") from None
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                c._health.mark_down(endpoint, e.code().name)
            return "ok" if got else "failed"
        return "ok" if got else "failed"


def _tiles(shards: list[Descriptor], lo: bytes, hi: bytes) -> bool:
    at = lo
    for d in sorted(shards, key=lambda d: d.start):
        if d.start > at:
            return False
        if not d.end:
            return True
        at = max(at, d.end)
        if hi and at >= hi:
            return True
    return False


def _event(ev: kv_pb2.Event, shard: int) -> WatchEvent:
    put = ev.type == kv_pb2.EVENT_TYPE_PUT
    return WatchEvent(
        type="put" if put else "delete",
        key=ev.kv.key,
        value=ev.kv.value if put else b"",
        revision=ev.kv.mod_revision,
        shard=shard,
        kv=ev.kv,
        prev_kv=ev.prev_kv if ev.HasField("prev_kv") else None,
    )


def open_watch(
    client: AsyncClient,
    key: bytes,
    *,
    prefix: bool = False,
    range_end: bytes | None = None,
    start_revision: int | None = None,
    prev_kv: bool = False,
    progress_notify: bool = False,
    progress_interval: float = 1.0,
) -> AsyncWatcher:
    if start_revision is not None and start_revision < 1:
        raise InvalidArgument(f"start_revision must be >= 1, got {start_revision}")
    if progress_interval <= 0:
        raise InvalidArgument(f"progress_interval must be > 0, got {progress_interval}")
    lo, hi = range_of(key, prefix, range_end)
    return AsyncWatcher(
        client,
        lo,
        hi,
        start_revision=start_revision or 0,
        prev_kv=prev_kv,
        progress_notify=progress_notify,
        progress_interval=progress_interval,
    )
