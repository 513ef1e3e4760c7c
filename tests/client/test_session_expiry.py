"""A client whose session expired on the node (idle past the bound: its stored outcomes
are gone) gets a clear answer and handles it itself: it starts a new session, sends a
write no attempt can have applied again under it, and reports a write that may have
applied as indeterminate (SessionExpired, definite False) instead of applying it twice.
Before, the node answered UNAVAILABLE ("may have applied before") and the client retried
until its deadline; and a retry after expiry applied again. Real node, in this process,
with the idle bound cut to 300 ms."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest

import kvstore.statemachine.apply as apply_mod
from kvstore.client import AsyncClient, SessionExpired
from tests.node.inprocess import start_node

pytestmark = pytest.mark.timeout(60)


def test_an_expired_session_is_renewed_and_a_maybe_applied_write_is_indeterminate(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        node, addr = await start_node(tmp_path)
        try:
            async with AsyncClient([addr], timeout=6) as c:
                await c.put("warm", "up")  # a leader, and the client's session
                with patch.object(apply_mod, "SESSION_IDLE_MS", 300):
                    # Idle past the bound, then a new write: sent again under a new
                    # session, the caller sees nothing but success.
                    first = c.incarnation
                    await asyncio.sleep(0.8)
                    await c.put("x", "1")
                    assert c.incarnation != first
                    assert c.retries.reasons.get("session expired") == 1
                    assert (await c.get_kv("x")).version == 1  # type: ignore[union-attr]

                    # A write whose answer is lost (it applied): the retry finds its
                    # session expired. It must not apply again; the caller learns the
                    # outcome is unknown, and the next write works under a new session.
                    replica = node.driver.replica
                    resolve = replica._resolve_writes
                    lost: list[int] = []

                    def lossy(g: Any, committed: Any, results: Any, **kw: Any) -> None:
                        for e in committed:
                            inf = g.inflight.get(e.index)
                            if not lost and inf and any(w.cmd.key == b"lost" for w in inf.writes):
                                g.inflight.pop(e.index)
                                lost.append(e.index)
                        resolve(g, committed, results, **kw)

                    replica._resolve_writes = lossy  # type: ignore[method-assign]
                    second = c.incarnation
                    with pytest.raises(SessionExpired) as e:
                        await c.put("lost", "1")
                    assert not e.value.definite
                    assert lost, "the first attempt applied and its answer was dropped"
                    assert c.incarnation != second
                    kv = await c.get_kv("lost")
                    assert kv is not None and kv.version == 1, "applied once, not twice"
                    await c.put("after", "2")
                    assert await c.get("after") == b"2"
        finally:
            await node.stop()

    asyncio.run(main())
