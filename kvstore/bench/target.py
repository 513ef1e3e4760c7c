"""The store under test, as the load generator sees it: put, get, close.

Rule this module keeps: both targets are driven through the same three calls by the same
closed loop, so a difference in the numbers is a difference in the stores (and their
client libraries), not in the generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Target(Protocol):
    async def put(self, key: bytes, value: bytes) -> None: ...

    async def get(self, key: bytes, read_mode: str) -> bytes | None: ...

    async def close(self) -> None: ...


async def open_target(kind: str, endpoints: Sequence[str], timeout_s: float) -> Target:
    """Connect to `kind` ("kvstore" or "etcd") at `endpoints` ("host:port" strings)."""
    if not endpoints:
        raise ValueError("--endpoints must name at least one host:port")
    if kind == "kvstore":
        from kvstore.bench.kvstore_target import KvstoreTarget

        return await KvstoreTarget.connect(endpoints, timeout_s)
    if kind == "etcd":
        from kvstore.bench.etcd_target import EtcdTarget

        return await EtcdTarget.connect(endpoints, timeout_s)
    raise ValueError(f"unknown target {kind!r}: expected 'kvstore' or 'etcd'")
