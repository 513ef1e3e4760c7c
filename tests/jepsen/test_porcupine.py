"""The checker agrees with Porcupine on every shared Jepsen history (verdicts.tsv).

The histories are Porcupine's test data (MIT, see tests/jepsen/porcupine/LICENSE.md), kept in
the repo so CI checks them on every run; KVSTORE_PORCUPINE_DATA names another folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kvstore.jepsen.checker.linearizable import check, is_linearizable
from kvstore.jepsen.formats import load
from kvstore.jepsen.history import by_key, pair


def _data_dir() -> Path:
    env = os.environ.get("KVSTORE_PORCUPINE_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "porcupine"


DATA = _data_dir()


def _verdicts() -> list[tuple[str, bool]]:
    table = DATA / "verdicts.tsv"
    if not table.is_file():
        return []
    rows = [line.split("\t") for line in table.read_text().splitlines()[1:] if line.strip()]
    return [(name, verdict.strip() == "true") for name, verdict in rows]


VERDICTS = _verdicts()
needs_data = pytest.mark.skipif(
    not VERDICTS, reason=f"Porcupine test data not found at {DATA} (set KVSTORE_PORCUPINE_DATA)"
)


def _path(name: str) -> Path:
    return DATA / ("etcd" if name.startswith("etcd") else "kv") / name


@needs_data
def test_every_shared_history_has_a_verdict() -> None:
    files = {p.name for p in (DATA / "etcd").iterdir()} | {p.name for p in (DATA / "kv").iterdir()}
    assert files == {name for name, _ in VERDICTS}


@needs_data
@pytest.mark.parametrize(("name", "linearizable"), VERDICTS, ids=[n for n, _ in VERDICTS])
def test_verdict_matches_porcupine(name: str, linearizable: bool) -> None:
    loaded = load(_path(name))
    t0 = time.monotonic()
    result = check(pair(loaded.events), loaded.model, shrink_budget=0.5)
    # c50-bad never finished before keys were searched side by side (about 0.2 s now)
    assert time.monotonic() - t0 < 20.0
    assert result.ok is linearizable
    for failure in result.failures:
        assert failure.window, "a failure names the operations that cannot be ordered"
        assert not is_linearizable(failure.window, loaded.model), "the window itself fails"


@needs_data
def test_windows_are_small_on_etcd_histories() -> None:
    sizes = []
    for name, linearizable in VERDICTS[:20]:
        if linearizable or not name.startswith("etcd"):
            continue
        loaded = load(_path(name))
        result = check(pair(loaded.events), loaded.model, shrink_budget=0.5)
        sizes.append(min(len(f.window) for f in result.failures))
    sizes.sort()
    assert sizes[len(sizes) // 2] <= 6, sizes


@needs_data
def test_all_histories_check_in_seconds() -> None:
    t0 = time.monotonic()
    for name, _ in VERDICTS:
        loaded = load(_path(name))
        check(pair(loaded.events), loaded.model, shrink_budget=0.0)
    assert time.monotonic() - t0 < 30.0  # about 2 s on an idle core


@needs_data
def test_every_key_of_the_50_client_history_alone() -> None:
    """Every key of c50-bad on its own (four of them take Porcupine minutes; 0.1 s here,
    since states no read can see are merged)."""
    loaded = load(_path("c50-bad.txt"))
    verdicts = [
        is_linearizable(ops, loaded.model, timeout=10.0) for _, ops in by_key(pair(loaded.events))
    ]
    assert len(verdicts) == 10 and not any(verdicts)  # every key of that history is broken
