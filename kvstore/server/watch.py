"""The Watch stream: a shard's history from a revision on, then its changes as they apply.

Rules:
- Events go out in revision order (within a revision in apply order), read from the
  replica's history table (kvstore/storage/history.py), never from memory: catching up
  and following are one code path, and what a stream sends is exactly what the history
  holds, the same on every replica.
- Every event of one revision travels in one message, unless it would pass
  MAX_MESSAGE_BYTES (then ``fragment`` marks the messages before the last). A message
  that is not a fragment carries ``progress_revision``: every event of the watched
  range up to it has been sent, so a client resumes from ``progress_revision + 1`` on
  any replica with no gap and no duplicate. An idle stream gets a progress message every
  progress interval (1 s by default), and the first message is one (the start).
- A stream ends with an error message, never silently: OUT_OF_RANGE naming the
  compacted revision when the start is compacted; ABORTED (stale route) when the
  replica no longer serves the range (split, merge, move); UNAVAILABLE when the replica
  has had no leader for NO_LEADER_S (etcd's require-leader: a cut-off replica's history
  stops moving, so the client moves instead).
- Streams wake when their group applies (``WatchHub.notify``, from the driver) and read
  at most MAX_READ_EVENTS events, looking at most at SCAN_EVENTS, per read, on the scan
  threads (KVService's), never on the event loop: a watch of a narrow range catching up
  through a busy retention window filtered all of it on the loop at once, and the node
  answered nothing meanwhile (heartbeats included). Streams of one group that ask for
  the same range from the same revision between two applies share one read and one
  encoding (``WatchHub.cached``): what a read returns depends only on the group's
  applied state, which only an apply changes, and many watchers of one prefix all ask
  for exactly that.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterable
from concurrent.futures import Executor
from typing import Any

import grpc

from kvstore._pb import kv_pb2
from kvstore.node.driver import NodeDriver
from kvstore.node.errors import (
    OpError,
    StaleRouteOp,
    UnavailableOp,
)
from kvstore.node.limits import Limits
from kvstore.node.routing import LocalRouter
from kvstore.server import convert
from kvstore.server.history import out_of_range
from kvstore.statemachine.history import Event, EventKind
from kvstore.storage import NodeStorage
from kvstore.storage.history import Compacted, HistoryReader, Moved

DEFAULT_PROGRESS_S = 1.0
MIN_PROGRESS_S = 0.05
MAX_READ_EVENTS = 1000
SCAN_EVENTS = 20_000
"""History events one read looks at, at most (a few ms of a scan thread)."""
MAX_READ_BYTES = 2 << 20
MAX_MESSAGE_BYTES = 2 << 20
NO_LEADER_S = 3.0


def watched_range(req: kv_pb2.WatchRequest) -> tuple[bytes, bytes]:
    """[lo, hi) of a request (hi b"": to the end), etcd's rules: no range_end is the
    key alone, range_end "\\0" is every key from key on."""
    if not req.range_end:
        return req.key, req.key + b"\0"
    if req.range_end == b"\0":
        return req.key, b""
    return req.key, req.range_end


def event_pb(e: Event, prev_kv: bool) -> kv_pb2.Event:
    out = kv_pb2.Event()
    if e.kind == EventKind.PUT:
        assert e.kv is not None
        convert.set_kv(out.kv, e.kv)
    else:
        out.type = kv_pb2.EVENT_TYPE_DELETE
        out.kv.key = e.key
        out.kv.mod_revision = e.revision
    if prev_kv and e.prev is not None:
        convert.set_kv(out.prev_kv, e.prev)
    return out


def pack(events: list[Event], through: int, prev_kv: bool) -> list[kv_pb2.WatchResponse]:
    """Messages for ``events`` (complete revisions) ending with progress ``through``."""
    out: list[kv_pb2.WatchResponse] = []
    msg = kv_pb2.WatchResponse()
    size = 0
    for i, e in enumerate(events):
        pb = event_pb(e, prev_kv)
        n = pb.ByteSize()
        if size and size + n > MAX_MESSAGE_BYTES:
            if events[i - 1].revision == e.revision:
                msg.fragment = True
                msg.progress_revision = e.revision - 1
            else:
                msg.progress_revision = events[i - 1].revision
            out.append(msg)
            msg, size = kv_pb2.WatchResponse(), 0
        msg.events.append(pb)
        size += n
    msg.progress_revision = through
    out.append(msg)
    return out


_Read = tuple[list[kv_pb2.WatchResponse], int, int, bool]
"""Packed messages (never changed once built: streams share them), the revision they
are complete through, the group's revision as of the read, whether it had events."""

READ_CACHE_ENTRIES = 256
READ_CACHE_BYTES = 32 << 20
"""What the shared reads may hold at most: a read is up to MAX_READ_BYTES, and 256 of
them (watchers catching up from different revisions) would pin half a gigabyte."""


class WatchHub:
    """Wakes the streams of groups that applied entries; keeps the reads of the current
    applied state of each group for the streams that ask the same (see the module doc)."""

    def __init__(self) -> None:
        self._waiters: dict[int, set[asyncio.Event]] = {}
        self.streams = 0
        self._generation: dict[int, int] = {}
        self._reads: dict[tuple[int, int, bytes, bytes, int, bool], _Read] = {}
        self.cached_bytes = 0

    def notify(self, groups: Iterable[int]) -> None:
        for g in groups:
            self._generation[g] = self._generation.get(g, 0) + 1
            for ev in self._waiters.get(g, ()):
                ev.set()

    def generation(self, group: int) -> int:
        """How many times ``group`` applied: a read taken now belongs to this one."""
        return self._generation.get(group, 0)

    def cached(self, key: tuple[int, bytes, bytes, int, bool]) -> _Read | None:
        return self._reads.get((self._generation.get(key[0], 0), *key))

    def keep(
        self, key: tuple[int, bytes, bytes, int, bool], read: _Read, generation: int = -1
    ) -> None:
        """Share ``read``, taken in ``generation`` (-1: the current one; a read that ran
        off the loop while the group applied belongs to the generation it began in)."""
        if generation < 0:
            generation = self._generation.get(key[0], 0)
        size = sum(m.ByteSize() for m in read[0])
        if size > READ_CACHE_BYTES:
            return
        if len(self._reads) >= READ_CACHE_ENTRIES or self.cached_bytes + size > READ_CACHE_BYTES:
            self._reads.clear()  # entries of past generations are never asked for again
            self.cached_bytes = 0
        self._reads[(generation, *key)] = read
        self.cached_bytes += size

    def subscribe(self, group: int) -> asyncio.Event:
        ev = asyncio.Event()
        self._waiters.setdefault(group, set()).add(ev)
        self.streams += 1
        return ev

    def unsubscribe(self, group: int, ev: asyncio.Event) -> None:
        self.streams -= 1
        s = self._waiters.get(group)
        if s is not None:
            s.discard(ev)
            if not s:
                del self._waiters[group]


class WatchService:
    def __init__(
        self,
        *,
        driver: NodeDriver,
        storage: NodeStorage,
        router: LocalRouter,
        limits: Limits,
        node_id: int,
        reads: Executor | None = None,
    ) -> None:
        self.driver = driver
        self.storage = storage
        self.router = router
        self.limits = limits
        self.node_id = node_id
        self.reads = reads
        """Where history reads run (None: asyncio's default threads)."""
        self.hub = WatchHub()

    def _header(self, group: int) -> kv_pb2.ResponseHeader:
        g = self.driver.groups.get(group)
        term, leader = (g.term, g.leader) if g is not None else (0, 0)
        hdr = convert.header(group, self.node_id, term, 0, leader)
        d = self.router.get(group)
        if d is not None:
            hdr.shard_version = d.epoch.version
        return hdr

    def _group(self, req: kv_pb2.WatchRequest, lo: bytes, hi: bytes) -> int:
        if req.shard:
            return self.router.for_range(lo, hi, req.shard, req.shard_version)
        return self.router.for_range(lo, hi, 0, 0)

    def _moved(self, group: int, lo: bytes, hi: bytes) -> OpError | None:
        if group not in self.driver.groups:
            return StaleRouteOp(
                f"stale route: shard {group} is no longer here",
                self.router.overlapping(lo, hi or lo + b"\0"),
            )
        if not self.router.sharded:
            return None
        d = self.storage.group(group).view.shard
        if d is not None and d.covers(lo, hi):
            return None
        return StaleRouteOp(
            f"stale route: shard {group} no longer holds the watched range",
            self.router.overlapping(lo, hi or lo + b"\0"),
        )

    async def serve(
        self, req: kv_pb2.WatchRequest, context: Any
    ) -> AsyncGenerator[kv_pb2.WatchResponse, None]:
        lo, hi = watched_range(req)
        try:
            self.limits.check_key(lo)
            if hi and hi != lo + b"\0":
                self.limits.check_key(hi)
            if hi and hi <= lo:
                raise ValueError(f"range_end {hi!r} must be above key {lo!r}")
        except (OpError, ValueError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            group = self._group(req, lo, hi)
        except OpError as e:
            yield kv_pb2.WatchResponse(error=convert.error_pb(e))
            return
        interval = (
            max(MIN_PROGRESS_S, req.progress_interval_ms / 1000)
            if req.progress_interval_ms
            else DEFAULT_PROGRESS_S
        )
        reader = HistoryReader(self.storage, group)
        loop = asyncio.get_running_loop()
        wake = self.hub.subscribe(group)
        try:
            nxt = req.start_revision or reader.revision() + 1
            compacted = reader.compacted()
            if nxt <= compacted:
                err = out_of_range(Compacted(nxt, compacted))
                yield kv_pb2.WatchResponse(error=convert.error_pb(err))
                return
            first = kv_pb2.WatchResponse(progress_revision=nxt - 1)
            first.header.CopyFrom(self._header(group))
            yield first
            sent_at = loop.time()
            leaderless_since: float | None = None
            while True:
                wake.clear()
                moved = self._moved(group, lo, hi)
                if moved is not None:
                    yield kv_pb2.WatchResponse(error=convert.error_pb(moved))
                    return
                key = (group, lo, hi, nxt, req.prev_kv)
                generation = self.hub.generation(group)
                read = self.hub.cached(key)
                if read is None:
                    try:
                        events, through, upto = await loop.run_in_executor(
                            self.reads,
                            reader.events_now,
                            nxt,
                            lo,
                            hi,
                            MAX_READ_EVENTS,
                            MAX_READ_BYTES,
                            SCAN_EVENTS,
                        )
                    except RuntimeError:  # the scan threads are shut down: node stopping
                        lost = UnavailableOp("the node is stopping", definite=True)
                        yield kv_pb2.WatchResponse(error=convert.error_pb(lost))
                        return
                    except Compacted as e:
                        yield kv_pb2.WatchResponse(error=convert.error_pb(out_of_range(e)))
                        return
                    except Moved as e:
                        # Split or merged after the check above (the view is published
                        # after the commit): the read's own snapshot says so.
                        shards = self.router.overlapping(lo, hi or lo + b"\0")
                        moved = StaleRouteOp(f"stale route: {e}", shards)
                        yield kv_pb2.WatchResponse(error=convert.error_pb(moved))
                        return
                    msgs = pack(events, through, req.prev_kv)
                    msgs[-1].header.CopyFrom(self._header(group))
                    read = (msgs, through, upto, bool(events))
                    self.hub.keep(key, read, generation)
                msgs, through, upto, has_events = read
                now = loop.time()
                caught_up = through >= upto
                if has_events or now - sent_at >= interval:
                    for m in msgs:
                        yield m
                    sent_at = now
                nxt = max(nxt, through + 1)
                if not caught_up:
                    continue  # more to read: no wait (each read is bounded)
                g = self.driver.groups.get(group)
                if g is not None and not g.leader:
                    leaderless_since = leaderless_since or now
                    if now - leaderless_since >= NO_LEADER_S:
                        lost = UnavailableOp(f"shard {group} has no leader here", definite=True)
                        yield kv_pb2.WatchResponse(error=convert.error_pb(lost))
                        return
                else:
                    leaderless_since = None
                timeout = max(0.0, interval - (loop.time() - sent_at))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
        finally:
            self.hub.unsubscribe(group, wake)
