"""Fixtures for integration tests: real `kvstore serve` processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import LocalCluster, paxos_available

CONSENSUS = [
    "raft",
    pytest.param(
        "paxos",
        marks=pytest.mark.skipif(
            not paxos_available(), reason="kvstore.consensus.paxos does not import yet"
        ),
    ),
]


@pytest.fixture(params=CONSENSUS)
def consensus(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cluster(tmp_path: Path, consensus: str) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path, consensus=consensus)
    try:
        c.start()
        c.wait_leader()
        yield c
    finally:
        c.close()
