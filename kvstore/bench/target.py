"""The store under test, as the load generator sees it: put, get, close.

Rule this module keeps: both targets are driven through the same three calls by the same
closed loop, so a difference in the numbers is a difference in the stores (and their
client libraries), not in the generator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol


class Target(Protocol):
    async def put(self, key: bytes, value: bytes) -> None: ...

    async def get(self, key: bytes, read_mode: str) -> bytes | None: ...

    async def close(self) -> None: ...

    def retries(self) -> dict[str, int]:
        """Retries inside the store's client so far: ``requests`` retried, and failed
        attempts by reason (empty for a client that does not retry or say)."""
        ...


async def open_target(kind: str, endpoints: Sequence[str], timeout_s: float) -> Target:
    """Connect to `kind` ("kvstore", "etcd" or "null") at `endpoints` ("host:port")."""
    if not endpoints and kind != "null":
        raise ValueError("--endpoints must name at least one host:port")
    if kind == "kvstore":
        from kvstore.bench.kvstore_target import KvstoreTarget

        return await KvstoreTarget.connect(endpoints, timeout_s)
    if kind == "etcd":
        from kvstore.bench.etcd_target import EtcdTarget

        return await EtcdTarget.connect(endpoints, timeout_s)
    if kind == "null":
        return NullTarget()
    raise ValueError(f"unknown target {kind!r}: expected 'kvstore', 'etcd' or 'null'")


class NullTarget:
    """Answers at once, in memory: measures the generator's own ceiling (and tests it)."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}

    async def put(self, key: bytes, value: bytes) -> None:
        await asyncio.sleep(0)
        self._data[key] = value

    async def get(self, key: bytes, read_mode: str) -> bytes | None:
        await asyncio.sleep(0)
        return self._data.get(key)

    async def close(self) -> None:
        self._data.clear()

    def retries(self) -> dict[str, int]:
        return {}
