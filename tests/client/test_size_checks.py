"""Client-side size checks (issue 14): a request past a limit fails at once with
InvalidArgument naming it (it used to travel and end in DeadlineExceeded)."""

from __future__ import annotations

import asyncio
import time

import pytest

from kvstore.client import AsyncClient, InvalidArgument, _limits
from kvstore.node.limits import Limits


def test_the_client_limits_are_the_nodes() -> None:
    assert Limits().max_value_bytes == _limits.MAX_VALUE_BYTES
    assert Limits().max_request_bytes == _limits.MAX_REQUEST_BYTES
    assert Limits().max_key_bytes == _limits.MAX_KEY_BYTES


def test_a_64_mib_value_fails_at_once_naming_the_limit() -> None:
    async def main() -> None:
        # Nothing listens there: only a check before sending can answer within the timeout.
        async with AsyncClient(["127.0.0.1:1"], timeout=3.0) as c:
            start = time.monotonic()
            with pytest.raises(InvalidArgument, match="limit max_value_bytes=1048576") as e:
                await c.put(b"k", b"x" * (64 << 20))
            assert e.value.definite
            with pytest.raises(InvalidArgument, match="max_value_bytes"):
                await c.cas(b"k", b"x" * ((1 << 20) + 1), None)
            with pytest.raises(InvalidArgument, match="limit max_key_bytes=8192"):
                await c.get(b"k" * (5 << 20))
            with pytest.raises(InvalidArgument, match="key is 8193 bytes; limit max_key_bytes"):
                await c.put(b"k" * 8193, b"v")
            assert time.monotonic() - start < 1.0

    asyncio.run(main())
