"""The client's endpoint health and failover, against real gRPC servers in this process:
a node (kvstore's own Node, single-member cluster) and a *silent* endpoint, a socket that
accepts connections and never says a word, as a paused (SIGSTOP) node does."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kvstore.client import AsyncClient
from kvstore.client._endpoints import Endpoints
from tests.node.inprocess import free_ports, start_node

pytestmark = pytest.mark.timeout(60)


@contextmanager
def _silent_endpoint() -> Iterator[str]:
    """Accepts TCP connections (the kernel does, from the backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        yield f"127.0.0.1:{s.getsockname()[1]}"


@asynccontextmanager
async def _health_server(port: int) -> AsyncIterator[str]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    ep = f"127.0.0.1:{port}"
    server.add_insecure_port(ep)
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        yield ep
    finally:
        await server.stop(None)


def test_pick_skips_down_and_excluded_endpoints_and_never_comes_up_empty() -> None:
    async def main() -> None:
        a, b, c = (f"127.0.0.1:{p}" for p in free_ports(3))  # nothing listens there
        eps = Endpoints([a, b, c], rng=random.Random(1))
        try:
            assert {eps.pick() for _ in range(6)} == {a, b, c}
            eps.mark_down(b, "test")
            assert not eps.is_up(b) and eps.why_down(b) == "test"
            assert b not in {eps.pick() for _ in range(6)}
            assert {eps.pick(exclude={a}) for _ in range(4)} == {c}
            # Every live endpoint excluded: a live one still beats a down one.
            assert {eps.pick(exclude={a, c}) for _ in range(4)} <= {a, c}
            eps.mark_down(a, "test")
            eps.mark_down(c, "test")
            assert eps.up() == []
            assert {eps.pick() for _ in range(6)} == {a, b, c}
            eps.mark_up(b)
            assert eps.up() == [b]
        finally:
            await eps.close()

    asyncio.run(main())


def test_probe_brings_an_endpoint_back_once_it_answers_and_not_before() -> None:
    async def main() -> None:
        (port,) = free_ports(1)
        ep = f"127.0.0.1:{port}"
        with _silent_endpoint() as silent:
            eps = Endpoints([ep, silent], probe_timeout=0.2)
            try:
                eps.mark_down(ep, "refused")
                eps.mark_down(silent, "no answer")
                await asyncio.sleep(0.8)  # several probes of each
                assert not eps.is_up(ep) and not eps.is_up(silent)
                async with _health_server(port):
                    t0 = time.monotonic()
                    while not eps.is_up(ep):
                        assert time.monotonic() - t0 < 3.0, "probe never saw the server"
                        await asyncio.sleep(0.02)
                assert not eps.is_up(silent)
            finally:
                await eps.close()

    asyncio.run(main())


def test_writes_queued_for_a_silent_node_cost_one_attempt_and_are_not_lost_to_the_window(
    tmp_path: Path,
) -> None:
    """A client whose writes first go to a silent node: each of those waits one attempt,
    then goes to the live node, and the client stops choosing the silent node. Meanwhile the
    client's other callers write far more than the session window (1,024 seqs), so a retry
    under its old seq would be refused as expired; it never left the client, so it goes
    out under a fresh one, and every write succeeds."""

    async def main() -> None:
        node, ep = await start_node(tmp_path)
        try:
            with _silent_endpoint() as silent:
                async with AsyncClient([ep], timeout=10) as warm:
                    await warm.put("warm", "up")  # the node has elected itself
                c = AsyncClient([silent, ep], timeout=10, attempt_timeout=2.0)
                loop = asyncio.get_running_loop()
                # at least 3 s, and on until the client wrote past the session window (a
                # slow, loaded machine takes longer to get there; 60 s is a hang)
                stop, hang = loop.time() + 3.0, loop.time() + 60.0
                done, failed, slowest = 0, [], 0.0

                async def caller(i: int) -> None:
                    nonlocal done, slowest
                    n = 0
                    while (loop.time() < stop or done <= 1100) and loop.time() < hang:
                        n += 1
                        t0 = loop.time()
                        try:
                            await c.put(f"k{i}", str(n))
                        except Exception as e:
                            failed.append(repr(e))
                            continue
                        done += 1
                        slowest = max(slowest, loop.time() - t0)

                try:
                    await asyncio.gather(*(caller(i) for i in range(32)))
                finally:
                    await c.close()
                print(f"\n{done} writes, slowest {slowest:.2f}s, retries {c.retries.as_dict()}")
                assert not failed, failed[:3]
                assert done > 1024
                assert slowest < 2.0 + 1.0
                # Only the writes already queued for the silent node met it.
                assert 0 < c.retries.reasons.get("no answer", 0) <= 32
        finally:
            await node.stop()

    asyncio.run(main())


def test_an_attempt_ends_on_silence_but_a_node_that_keeps_answering_keeps_it() -> None:
    from kvstore.client._attempts import Watch
    from kvstore.client._stream import BatchStream

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stream = BatchStream("127.0.0.1:1")  # never connected: heard_at is ours to set
        try:
            # Silent: over after `silence`, long before `hard`, and marked silent.
            t0 = loop.time()
            fut: asyncio.Future[None] = loop.create_future()
            w = Watch(loop, fut, stream, t0, 0.2, t0 + 5.0)
            with pytest.raises(TimeoutError):
                await fut
            assert w.silent and 0.19 <= loop.time() - t0 < 1.0
            # Answering others every 50 ms: kept until `hard`, and not called silent.
            t0 = loop.time()
            fut = loop.create_future()
            w = Watch(loop, fut, stream, t0, 0.2, t0 + 0.6)
            while not fut.done():
                stream.heard_at = loop.time()
                await asyncio.sleep(0.05)
            with pytest.raises(TimeoutError):
                fut.result()
            assert not w.silent and 0.59 <= loop.time() - t0 < 1.0
            # Answered in time: cancel stops the timer.
            fut = loop.create_future()
            w = Watch(loop, fut, stream, loop.time(), 0.1, loop.time() + 0.1)
            w.cancel()
            await asyncio.sleep(0.2)
            assert not fut.done()
        finally:
            await stream.close()

    asyncio.run(main())


def test_an_answer_racing_the_attempt_timer_still_counts_as_sent() -> None:
    """Regression (Jepsen kill run under load: a cas answered false although it had
    applied): the attempt timer fails the op, the node's answer arrives before the caller
    resumes and takes the op off the stream's pending table, and ``forget`` then said
    "never sent", so the write was retried under a fresh seq and applied twice."""
    from kvstore._pb import kv_pb2
    from kvstore.client._stream import BatchStream

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stream = BatchStream("127.0.0.1:1")  # never connected: the tables are ours to drive
        try:
            sent: asyncio.Future[kv_pb2.OpResult] = loop.create_future()
            stream._pending[41] = sent  # what the sender does when it writes op 41
            sent.set_exception(TimeoutError())  # the attempt timer fires first
            stream._call = _OneAnswer(kv_pb2.BatchResponse(results=[kv_pb2.OpResult(id=41)]))
            receiver = asyncio.create_task(stream._receiver())  # then the answer arrives
            for _ in range(5):
                await asyncio.sleep(0)
            assert stream.forget(41), "op 41 left this client: its outcome is unknown"
            assert not stream.forget(41)
            queued = stream.submit(kv_pb2.Op())  # never handed to the stream
            queued.set_exception(TimeoutError())
            op_id = stream._queue[-1][0].id
            assert not stream.forget(op_id)
            receiver.cancel()
        finally:
            stream._call = None
            await stream.close()

    asyncio.run(main())


class _OneAnswer:
    """A Batch call that delivers one response, then stays open."""

    def __init__(self, resp: object) -> None:
        self.resp = resp

    async def __aiter__(self) -> Any:
        yield self.resp
        await asyncio.Event().wait()

    def cancel(self) -> None:
        pass


def test_a_stream_breaking_after_the_attempt_timer_leaves_the_op_sent() -> None:
    """Regression (Jepsen pause/kill runs under load: writes reported as certain failures
    whose values were read later): the attempt timer fails a sent op, the stream breaks
    (node killed) before the caller resumes, and the break cleared the pending table, so
    ``forget`` said "never sent": the write was retried under a fresh seq or reported
    ``definite`` although it may have applied."""
    from kvstore._pb import kv_pb2
    from kvstore.client._stream import BatchStream

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stream = BatchStream("127.0.0.1:1")  # never connected: the tables are ours to drive
        try:
            sent: asyncio.Future[kv_pb2.OpResult] = loop.create_future()
            stream._pending[7] = sent  # what the sender does when it writes op 7
            sent.set_exception(TimeoutError())  # the attempt timer fires first
            stream._break("stream to 127.0.0.1:1 ended")  # then the node goes away
            assert stream.forget(7), "op 7 left this client: its outcome is unknown"
            assert not stream.forget(7)
            assert isinstance(sent.exception(), TimeoutError)
        finally:
            await stream.close()

    asyncio.run(main())
