"""kvstore as a benchmark target: one AsyncClient per load process.

Rule this module keeps: the generator adds nothing of its own between the closed loop and
the client library, so concurrent calls reach the library's own multiplexing and batching
exactly as an application's would.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any


def _client_module() -> Any:
    # Imported by name, at connect time: the generator (and its etcd side) works in a
    # checkout whose client library is absent or broken, and mypy does not tie this
    # module to the client's exact types.
    return importlib.import_module("kvstore.client")


def _tls() -> dict[str, str | None]:
    """`kvstore bench --cacert --cert --key` (set in the environment by the command, so
    every load process sees them): etcdctl's names, as the other client commands."""
    return {
        name: os.environ.get(f"KVSTORE_{name.upper()}") or None
        for name in ("cacert", "cert", "key")
    }


class KvstoreTarget:
    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    async def connect(cls, endpoints: Sequence[str], timeout_s: float) -> KvstoreTarget:
        client = _client_module().AsyncClient(list(endpoints), timeout=timeout_s, **_tls())
        await client.__aenter__()
        return cls(client)

    async def put(self, key: bytes, value: bytes) -> None:
        await self._client.put(key, value)

    async def get(self, key: bytes, read_mode: str) -> bytes | None:
        value: bytes | None = await self._client.get(key, read_mode=read_mode)
        return value

    async def close(self) -> None:
        await self._client.__aexit__(None, None, None)

    def retries(self) -> dict[str, int]:
        stats = getattr(self._client, "retries", None)
        return {} if stats is None else {str(k): int(v) for k, v in stats.as_dict().items()}


def probe_kvstore(endpoints: Sequence[str], timeout_s: float = 2.0) -> bool:
    """True when a put and a strong get succeed through the client library (blocking)."""
    with _client_module().Client(list(endpoints), timeout=timeout_s, **_tls()) as c:
        c.put(b"bench-probe", b"1")
        return bool(c.get(b"bench-probe", read_mode="strong") == b"1")
