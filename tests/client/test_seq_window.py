"""The client hands out write seqs in a window (kvstore.client._session.WRITE_WINDOW): a
new write waits while it would run WRITE_WINDOW or more seqs past the oldest write still
in flight, so no write's seq can fall out of the node's session window while it waits or
retries, and a reissued seq (a write no attempt can have applied) leaves the window."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from kvstore._pb import kv_pb2
from kvstore.client import AsyncClient, DeadlineExceeded
from kvstore.client._attempts import seq_of
from kvstore.client._session import WRITE_WINDOW
from kvstore.server.process import Node, ServeOptions
from kvstore.statemachine.apply import SESSION_WINDOW


def put(i: int) -> kv_pb2.Op:
    return kv_pb2.Op(put=kv_pb2.PutRequest(key=b"k%d" % i, value=b"v", client_id=7))


def test_the_write_window_stays_inside_the_session_window() -> None:
    assert WRITE_WINDOW <= SESSION_WINDOW // 2


def test_a_new_write_waits_for_the_oldest_one_in_flight() -> None:
    async def main() -> None:
        c = AsyncClient(["127.0.0.1:1"], client_id=7)
        ops = [put(i) for i in range(WRITE_WINDOW)]
        for op in ops:
            await c._session.take_seq(op)
        assert [seq_of(op) for op in ops] == list(range(1, WRITE_WINDOW + 1))
        extra = put(-1)
        waiting = asyncio.create_task(c._session.take_seq(extra))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await c._session.release_seq(ops[5])  # a younger write ending does not move the window
        await asyncio.sleep(0.05)
        assert not waiting.done()
        # The oldest write takes a fresh seq: seq 1 leaves, and the first of the two
        # that wait for the window gets seq WRITE_WINDOW + 1 (the waiting new write).
        deadline = asyncio.get_running_loop().time() + 1.0
        reissue = asyncio.create_task(c.reissue_seq(ops[0], deadline))
        await asyncio.wait_for(waiting, 1.0)
        assert seq_of(extra) == WRITE_WINDOW + 1
        await asyncio.sleep(0.05)
        assert not reissue.done()  # 2 .. WRITE_WINDOW + 1 fill the window
        await c._session.release_seq(ops[1])  # seq 2 ends: the oldest in flight is now 3
        assert await asyncio.wait_for(reissue, 1.0)
        assert seq_of(ops[0]) == WRITE_WINDOW + 2

    asyncio.run(main())


def test_retries_through_an_election_keep_every_seq_inside_the_session_window(
    tmp_path: Path,
) -> None:
    """Many callers of one client retry writes that fail for certain (no leader: a node
    started with --join answers every write "not the leader") while an older write that
    may have applied still waits for its answer. Each retry takes a fresh seq; those seqs
    used to be handed out without regard to the window, so after 1,024 of them the older
    write's retry was refused by the node as "session window expired: the request may have
    applied before" (seen in CI: writes failing after a leader was paused)."""

    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ep = f"127.0.0.1:{s.getsockname()[1]}"
        node = Node(ServeOptions(id=1, listen=ep, peers={1: ep}, data_dir=str(tmp_path), join=True))
        await node.start()
        try:
            async with AsyncClient([ep], client_id=7, timeout=2.0) as c:
                older = put(0)
                await c._session.take_seq(older)  # sent, no answer yet: it keeps its seq
                widest = 0

                async def caller(i: int) -> None:
                    nonlocal widest
                    with pytest.raises(DeadlineExceeded):
                        await c.put(f"k{i}", "v")
                    widest = max(widest, c._session._next_seq - seq_of(older))

                async def watch() -> None:
                    nonlocal widest
                    for _ in range(100):
                        widest = max(widest, c._session._next_seq - seq_of(older))
                        await asyncio.sleep(0.02)

                await asyncio.gather(watch(), *(caller(i) for i in range(200)))
                # (Before, each caller retried some ten times: over 1,500 seqs past it.)
                assert widest <= WRITE_WINDOW, widest
        finally:
            await node.stop()

    asyncio.run(main())
