"""The client hands out write seqs in a window (kvstore.client._async.WRITE_WINDOW): a
new write waits while it would run WRITE_WINDOW or more seqs past the oldest write still
in flight, so no write's seq can fall out of the node's session window while it waits or
retries, and a reissued seq (a write no attempt can have applied) leaves the window."""

from __future__ import annotations

import asyncio

from kvstore._pb import kv_pb2
from kvstore.client import AsyncClient
from kvstore.client._async import WRITE_WINDOW
from kvstore.client._attempts import seq_of
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
            await c._take_seq(op)
        assert [seq_of(op) for op in ops] == list(range(1, WRITE_WINDOW + 1))
        extra = put(-1)
        waiting = asyncio.create_task(c._take_seq(extra))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await c._release_seq(ops[5])  # a younger write ending does not move the window
        await asyncio.sleep(0.05)
        assert not waiting.done()
        c.reissue_seq(ops[0])  # the oldest write takes a fresh seq: seq 1 leaves
        assert seq_of(ops[0]) == WRITE_WINDOW + 1
        await c._release_seq(ops[1])  # seq 2 ends: the oldest in flight is now 3
        await asyncio.wait_for(waiting, 1.0)
        assert seq_of(extra) == WRITE_WINDOW + 2

    asyncio.run(main())
