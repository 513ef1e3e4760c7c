"""Fixtures for storage tests: a fresh NodeStorage in a temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.storage import NodeStorage


@pytest.fixture
def store_path(tmp_path: Path) -> str:
    return str(tmp_path / "node")


@pytest.fixture
def st(store_path: str) -> Iterator[NodeStorage]:
    storage = NodeStorage(store_path, map_size=64 << 20)
    yield storage
    storage.close()
