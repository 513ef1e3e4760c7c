"""AsyncClient: leader discovery and redirect, retries inside a deadline, exactly-once writes.

Rules:
- Every call has one deadline (``timeout``); retries happen inside it. An attempt ends
  when its node has been silent (nothing at all on the stream) for ``attempt_timeout``,
  or when the node had its time (a read: one attempt; a write: longer, so a slow node
  that keeps answering is not flooded with re-proposals). A node that cannot be reached
  costs one attempt: the call moves on at once and the client avoids the node until it
  answers again (_endpoints.py); "not here, not now" answers are retried with backoff.
- A write keeps its (client_id, incarnation, seq) across retries once an attempt may have
  taken effect, so a retry that reaches a state machine which already applied it returns
  the original answer (exactly-once). Until then (every attempt certainly failed) a retry
  takes a fresh seq, which the session window cannot have passed by. Seqs are handed
  out in a window (_session.py). The incarnation is drawn afresh for every client
  object: a restarted process that reuses its client_id starts a new session and never
  gets an old process's answers.
- An error is ``definite`` only if no attempt may have taken effect.
- Concurrent calls share one Batch stream per endpoint (see _stream.py).
- Every answer's causal token is kept; writes and causal reads carry it (_session.py).

The lease, lock, election, watch and compact calls are mixed in from _lease_watch.py, the
operator calls from _admin_calls.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import Sequence

import grpc
import grpc.aio

from kvstore._pb import kv_pb2
from kvstore.client._admin_calls import AdminCalls
from kvstore.client._attempts import RetryStats, Watch, incarnation_of, set_incarnation
from kvstore.client._endpoints import Endpoints
from kvstore.client._lease_watch import LeaseWatchCalls
from kvstore.client._limits import check_sizes
from kvstore.client._limits import to_bytes as _b
from kvstore.client._routing import SERVER_SCAN_LIMIT, ShardRouter, route_op
from kvstore.client._session import Session, read_mode
from kvstore.client._stream import BatchStream, StreamBroken
from kvstore.client.errors import (
    DeadlineExceeded,
    InvalidArgument,
    KVError,
    NotLeader,
    SessionExpired,
    Unavailable,
    from_error,
)
from kvstore.security.tls import PathOrPem, client_tls

ATTEMPT_FRACTION = 0.2
MIN_ATTEMPT_S = 0.25
MAX_ATTEMPT_S = 1.0
"""One attempt gets ATTEMPT_FRACTION of the call's timeout, within these bounds (about one
election timeout at the default timing), so a paused node costs one attempt, not the call."""
WRITE_ATTEMPTS = 2.0
WRITE_FRACTION = 1 / 3
"""A node that keeps answering may take max(WRITE_ATTEMPTS attempts, WRITE_FRACTION of the
timeout) over a write before it is retried elsewhere."""
SERVER_SHARE = 0.9
"""The node is asked to answer within this share of the time we give it."""
BACKOFF_FIRST_S = 0.02
BACKOFF_MAX_S = 0.25
DEFAULT_ENDPOINTS = ("127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003")
_NOT_LEADER = grpc.StatusCode.FAILED_PRECONDITION.value[0]
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE.value[0],
    grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
    grpc.StatusCode.ABORTED.value[0],
}
_REASONS = {
    grpc.StatusCode.DEADLINE_EXCEEDED.value[0]: "node deadline",
    grpc.StatusCode.ABORTED.value[0]: "node aborted",
}


def parse_endpoints(endpoints: Sequence[str] | str) -> list[str]:
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",")]
    out = [e.strip() for e in endpoints if e.strip()]
    if not out:
        raise ValueError("no endpoints given")
    return out


class AsyncClient(LeaseWatchCalls, AdminCalls):
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
        """``cacert``, ``cert``, ``key``: TLS as etcdctl's flags (paths, or PEM bytes):
        the CA that signed the nodes' certificates, and this client's certificate and key
        (its role, security/auth.py). Without them the client speaks plaintext.
        ``replica``: index in ``endpoints`` of the node that serves this client's
        eventual and causal reads whenever it is up (Jepsen binds a client to a node this
        way); without it the client starts on one at random (so clients spread) and stays
        on whichever live replica it last moved to. ``attempt_timeout``: how long one
        attempt waits for an answer before the call tries another node (default: a fifth
        of ``timeout``, within 0.25-1 s)."""
        self.endpoints = parse_endpoints(endpoints)
        self.tls = client_tls(cacert, cert, key)
        self.timeout = timeout
        self.attempt_timeout = (
            attempt_timeout
            if attempt_timeout is not None
            else min(MAX_ATTEMPT_S, max(MIN_ATTEMPT_S, timeout * ATTEMPT_FRACTION))
        )
        self.client_id = client_id or random.SystemRandom().randrange(1, 1 << 64)
        self.incarnation = random.SystemRandom().randrange(1, 1 << 64)
        self._session = Session()
        """Write seqs and the causal token (_session.py)."""
        self._streams: dict[str, BatchStream] = {}
        self._leader: str | None = None
        self._health = Endpoints(self.endpoints, tls=self.tls)
        self._home: str | None = (
            self.endpoints[replica % len(self.endpoints)] if replica is not None else None
        )
        self._replica: str = self._home or random.choice(self.endpoints)
        """Where non-strong reads go: one replica per client, kept until it fails, so its
        ops share one stream and pack into big batches."""
        self.retries = RetryStats()
        """What this client retried and why (``kvstore bench`` reports it)."""
        self._router = ShardRouter(self)
        """Shard routing on a sharded cluster (the map is fetched at the first call)."""

    @property
    def causal_token(self) -> int:
        """The causal token: the highest hybrid clock time this client has written or
        observed, on any shard (_session.py)."""
        return self._session.token

    @causal_token.setter
    def causal_token(self, t: int) -> None:
        self._session.token = t

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._health.close()
        streams, self._streams = list(self._streams.values()), {}
        for s in streams:
            await s.close()

    # -- routing ----------------------------------------------------------------------
    def _stream(self, endpoint: str) -> BatchStream:
        s = self._streams.get(endpoint)
        if s is None or s.broken is not None:
            if s is not None:
                asyncio.get_running_loop().create_task(s.close())
            s = self._streams[endpoint] = BatchStream(endpoint, self.tls)
        return s

    def _first_endpoint(self, anywhere: bool) -> str:
        up = self._health.is_up
        if not anywhere:
            if self._leader is not None and up(self._leader):
                return self._leader
            return self._health.pick()
        if self._home is not None and up(self._home):
            return self._home
        if not up(self._replica):
            self._replica = self._health.pick()
        return self._replica

    def _failover(self, failed: str, tried: set[str], anywhere: bool) -> tuple[str, bool]:
        """The endpoint to try after ``failed`` failed this call, and whether to back off
        first (every live endpoint has failed this call already)."""
        tried.add(failed)
        if self._leader == failed:
            self._leader = None
        if anywhere:
            if self._replica == failed:
                # Settle on the new replica (a bound client returns home once it is up).
                self._replica = self._health.pick(exclude=tried)
            nxt = self._replica
            if nxt in tried or not self._health.is_up(nxt):
                nxt = self._health.pick(exclude=tried)
        elif self._leader is not None and self._health.is_up(self._leader):
            nxt = self._leader
        else:
            nxt = self._health.pick(exclude=tried)
        return nxt, nxt in tried

    async def _sharded(self) -> bool:
        """Whether to route by shard: once a node has shown the cluster is sharded (a
        stale-route answer or a versioned header), with the map fetched. An unsharded
        cluster never costs an extra call."""
        r = self._router
        if r.detected and not r.sharded:
            with contextlib.suppress(KVError):  # unreachable now: the call reports it
                await r.fetch(asyncio.get_running_loop().time() + self.timeout)
        return bool(r.sharded)

    async def _execute(
        self, op: kv_pb2.Op, *, write: bool, anywhere: bool = False
    ) -> kv_pb2.OpResult:
        """Run one op with redirects and retries until it succeeds or the deadline passes.

        A node that cannot be reached (its stream breaks or cannot connect, or a whole
        attempt gets no answer while it answers nothing else) is marked down and the op
        moves to another node at once; answers that say "not here, not now" (not leader
        without a usable hint, unavailable) back off first. On a sharded cluster the op
        goes to its shard (_routing.py).
        """
        if write and self.client_id:
            # Seqs are handed out in a window: a new write waits while it would be
            # WRITE_WINDOW or more seqs past the oldest write still in flight. Without it a
            # write queued behind thousands of others, or retried after a node went
            # silent while the other callers' writes went on, carried a seq the session
            # window (SESSION_WINDOW applied seqs) had passed, and was refused as "may
            # have applied" until its deadline.
            for again in (False, True):
                await self._session.take_seq(op)
                try:
                    return await self._execute_op(op, write=write, anywhere=anywhere)
                except SessionExpired as e:
                    # The node forgot this session's outcomes (idle too long): start a
                    # new one. A write no attempt can have applied goes again under
                    # it; one that may have applied is indeterminate for the caller.
                    self._renew_session(incarnation_of(op))
                    if again or not e.definite:
                        raise
                    set_incarnation(op, self.incarnation)
                finally:
                    await self._session.release_seq(op)
        return await self._execute_op(op, write=write, anywhere=anywhere)

    def _renew_session(self, expired: int) -> None:
        """A new incarnation (a new session on every node), once per expired one."""
        if expired == self.incarnation:
            self.incarnation = random.SystemRandom().randrange(1, 1 << 64)
            self.retries.count("session expired")

    async def reissue_seq(self, op: kv_pb2.Op, deadline: float) -> bool:
        """A fresh seq for a write no attempt can have applied (_session.py)."""
        return await self._session.reissue_seq(op, deadline)

    async def _execute_op(self, op: kv_pb2.Op, *, write: bool, anywhere: bool) -> kv_pb2.OpResult:
        self._session.carry(op, write=write)
        if not await self._sharded():
            try:
                return await self._execute_unrouted(op, write=write, anywhere=anywhere)
            except _ShardedCluster as e:
                self._router.detected = True
                if op.HasField("scan"):
                    raise  # scan() crosses the shards itself
                if not await self._sharded():
                    raise Unavailable(
                        "the cluster is sharded but its shard map cannot be fetched",
                        definite=not e.maybe_applied,
                    ) from None
                return await self._router.execute(
                    op,
                    write=write,
                    anywhere=anywhere,
                    route=route_op(op),
                    maybe_applied=e.maybe_applied,
                )
        return await self._router.execute(op, write=write, anywhere=anywhere, route=route_op(op))

    async def _execute_unrouted(
        self, op: kv_pb2.Op, *, write: bool, anywhere: bool
    ) -> kv_pb2.OpResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        maybe_applied = False
        last: KVError | None = None
        tried: set[str] = set()
        endpoint = self._first_endpoint(anywhere)
        wait = False
        waits = 0
        for attempt in itertools.count():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if wait:
                pause = random.uniform(0.5, 1.0) * min(BACKOFF_FIRST_S * 2**waits, BACKOFF_MAX_S)
                waits += 1
                await asyncio.sleep(min(remaining, pause))
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
            if attempt:
                if attempt == 1:
                    self.retries.requests += 1
                if write and not maybe_applied and not await self.reissue_seq(op, deadline):
                    # No attempt can have applied, so a fresh seq is as safe as the old
                    # one, and it cannot have fallen out of the session window while
                    # this op waited (the other callers' writes move the window on).
                    break
            # How long the node may take: a read gets one attempt; a write, which the
            # node proposes and must commit, gets more (a slow node that is answering
            # would otherwise see each retry re-proposed and time out again).
            span = self.attempt_timeout
            if write:
                span = max(span * WRITE_ATTEMPTS, self.timeout * WRITE_FRACTION)
            span = min(remaining, span)
            # The node gives up a little before we do, so its "timed out" or "not caught
            # up" answer arrives before our timer.
            op.timeout_ms = max(1, int(span * 1000 * SERVER_SHARE))
            stream = self._stream(endpoint)
            sent_at = loop.time()
            fut = stream.submit(op)
            watch = Watch(loop, fut, stream, sent_at, self.attempt_timeout, sent_at + span)
            try:
                result = await fut
            except TimeoutError:
                sent = stream.forget(op.id)
                maybe_applied = maybe_applied or (write and sent)
                last = DeadlineExceeded(
                    f"no answer from {endpoint} within {loop.time() - sent_at:.2f}s",
                    definite=not maybe_applied,
                )
                if watch.silent:
                    # Nothing at all came back on this stream for a whole attempt: paused,
                    # cut off or a connection that never came up, not a slow answer.
                    self._health.mark_down(endpoint, "no answer")
                self.retries.count("no answer")
                endpoint, wait = self._failover(endpoint, tried, anywhere)
                continue
            except StreamBroken as e:
                watch.cancel()
                maybe_applied = maybe_applied or (write and e.sent)
                last = Unavailable(str(e), definite=not maybe_applied)
                self._health.mark_down(endpoint, str(e))
                self.retries.count("stream broken")
                endpoint, wait = self._failover(endpoint, tried, anywhere)
                continue
            watch.cancel()
            self._health.mark_up(endpoint)
            if not result.HasField("error"):
                if not anywhere:
                    self._leader = endpoint
                return result
            err = result.error
            if err.stale_route:
                raise _ShardedCluster(maybe_applied)  # definite: this attempt did nothing
            if err.session_expired:
                raise SessionExpired(err.message, definite=not maybe_applied)
            maybe_applied = maybe_applied or (write and not err.definite)
            last = from_error(err, definite=err.definite and not maybe_applied)
            if err.code == _NOT_LEADER:
                self.retries.count("not leader")
                hint = err.leader_endpoint
                if hint and hint != endpoint and self._health.is_up(hint):
                    wait = hint in tried
                    endpoint = self._leader = hint
                else:
                    # No leader known, or only one that is down: an election is under way.
                    endpoint, _ = self._failover(endpoint, tried, anywhere)
                    wait = True
                continue
            if err.code in _RETRYABLE:
                # Another node may do better (a leader cut off from its quorum times out
                # until it steps down; the others point at the new leader).
                self.retries.count(_REASONS.get(err.code, "node unavailable"))
                endpoint, _ = self._failover(endpoint, tried, anywhere)
                wait = True
                continue
            raise last
        if last is not None and not isinstance(last, NotLeader | Unavailable):
            last.definite = last.definite and not maybe_applied
        raise DeadlineExceeded(
            f"operation did not complete within {self.timeout}s"
            + (f" (last error: {last.message})" if last is not None else ""),
            definite=not maybe_applied,
        )

    def _observe(self, hdr: kv_pb2.ResponseHeader) -> None:
        self._session.observe(hdr)
        self._router.observe(hdr)

    # -- the KV API -------------------------------------------------------------------
    async def put(self, key: bytes | str, value: bytes | str, lease: int = 0) -> int:
        """Write; returns the revision (the log index of the write). ``lease``: the key
        is deleted when that lease expires or is revoked (NotFound if it is gone)."""
        check_sizes(_b(key), _b(value))
        op = kv_pb2.Op(
            put=kv_pb2.PutRequest(
                key=_b(key),
                value=_b(value),
                client_id=self.client_id,
                incarnation=self.incarnation,
                lease=lease,
            )
        )
        r = (await self._execute(op, write=True)).put
        self._observe(r.header)
        return r.revision

    async def get(
        self, key: bytes | str, read_mode: str = "strong", revision: int = 0
    ) -> bytes | None:
        """The value (None: absent); ``revision``: as of that revision of the key's
        shard (Compacted when its history no longer holds it, docs/watch.md)."""
        kv = await self.get_kv(key, read_mode=read_mode, revision=revision)
        return None if kv is None else kv.value

    async def get_kv(
        self, key: bytes | str, read_mode: str = "strong", revision: int = 0
    ) -> kv_pb2.KeyValue | None:
        """Like get, with the key's metadata (version, create/mod revision)."""
        mode = _mode(read_mode)
        check_sizes(_b(key))
        if revision < 0:
            raise InvalidArgument(f"revision must be >= 0, got {revision}")
        op = kv_pb2.Op(get=kv_pb2.GetRequest(key=_b(key), read_mode=mode, revision=revision))
        r = (await self._execute(op, write=False, anywhere=mode != kv_pb2.READ_MODE_STRONG)).get
        self._observe(r.header)
        return r.kv if r.HasField("kv") else None

    async def delete(self, key: bytes | str) -> bool:
        check_sizes(_b(key))
        op = kv_pb2.Op(
            delete=kv_pb2.DeleteRequest(
                key=_b(key),
                client_id=self.client_id,
                incarnation=self.incarnation,
            )
        )
        r = (await self._execute(op, write=True)).delete
        self._observe(r.header)
        return r.deleted

    async def cas(
        self,
        key: bytes | str,
        expected: bytes | str | None,
        new: bytes | str | None,
        lease: int = 0,
    ) -> bool:
        """Set ``key`` to ``new`` (None: delete it) iff its value is ``expected``
        (None: iff it is absent). Returns whether the swap happened. ``lease``: as put's."""
        r = await self.cas_response(key, expected, new, lease)
        return r.succeeded

    async def cas_response(
        self,
        key: bytes | str,
        expected: bytes | str | None,
        new: bytes | str | None,
        lease: int = 0,
    ) -> kv_pb2.CasResponse:
        """``cas`` with the whole answer (the revision, the key before)."""
        check_sizes(_b(key), *(_b(v) for v in (expected, new) if v is not None))
        req = kv_pb2.CasRequest(
            key=_b(key), client_id=self.client_id, incarnation=self.incarnation, lease=lease
        )
        if expected is None:
            req.expect_absent = True
        else:
            req.expected_value = _b(expected)
        if new is None:
            req.delete_key = True
        else:
            req.new_value = _b(new)
        r = (await self._execute(kv_pb2.Op(cas=req), write=True)).cas
        self._observe(r.header)
        return r

    async def scan(
        self,
        start: bytes | str = b"",
        end: bytes | str = b"",
        limit: int = 0,
        read_mode: str = "strong",
    ) -> list[tuple[bytes, bytes]]:
        """Keys in [start, end) in order (empty end: to the end), at most ``limit`` (0: the
        server's limit)."""
        mode = _mode(read_mode)
        if await self._sharded():
            kvs = await self._router.scan(_b(start), _b(end), limit, mode)
            return [(kv.key, kv.value) for kv in kvs]
        # A node stops a page at its byte cap with more=true: ask again from after the
        # last key until the caller's limit (or the server's) is reached, else a scan of
        # big values would silently return fewer rows than it was asked for.
        out: list[tuple[bytes, bytes]] = []
        cap = limit if limit > 0 else SERVER_SCAN_LIMIT
        cursor = _b(start)
        while True:
            op = kv_pb2.Op(
                scan=kv_pb2.ScanRequest(
                    start=cursor,
                    end=_b(end),
                    limit=cap - len(out),
                    read_mode=mode,
                )
            )
            try:
                r = (
                    await self._execute(op, write=False, anywhere=mode != kv_pb2.READ_MODE_STRONG)
                ).scan
            except _ShardedCluster:
                if not await self._sharded():
                    raise Unavailable("the shard map cannot be fetched", definite=True) from None
                kvs = await self._router.scan(cursor, _b(end), cap - len(out), mode)
                out.extend((kv.key, kv.value) for kv in kvs)
                return out
            self._observe(r.header)
            out.extend((kv.key, kv.value) for kv in r.kvs)
            if len(out) >= cap or not (r.more and r.kvs):
                return out[:cap]
            cursor = r.kvs[-1].key + b"\0"


class _ShardedCluster(Exception):
    """A node answered with a stale route: the cluster is sharded; route by shard."""

    def __init__(self, maybe_applied: bool) -> None:
        super().__init__("sharded cluster")
        self.maybe_applied = maybe_applied


_mode = read_mode
