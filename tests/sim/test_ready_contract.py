"""The Ready contract's query side, held against both real cores over simulated schedules:
``has_ready()`` changes nothing (asked twice, or not followed by ``ready()``, it leaves
the core as it was) and says exactly whether ``ready()`` would hand out anything.
Multi-Paxos used to build and queue the leader's messages inside ``has_ready()`` (issue 10).
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

from kvstore.consensus.types import Config, Core, LogStorage

from .cluster import EXTRA_FACTORIES, load_core
from .schedule import run_schedule

SEEDS = range(8)


class QueryChecked:
    """Wraps a core; every ``has_ready()`` is checked for side effects and truth."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self.checked = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)

    def has_ready(self) -> bool:
        before = pickle.dumps(self._core)
        answer = self._core.has_ready()
        assert pickle.dumps(self._core) == before, "has_ready() changed the core"
        would = not copy.deepcopy(self._core).ready().is_empty()
        assert answer == would, f"has_ready() said {answer}, ready() would hand out {would}"
        self.checked += 1
        return answer


@pytest.mark.parametrize("kind", ["raft", "paxos"])
def test_has_ready_is_a_pure_and_true_answer(kind: str) -> None:
    loaded = load_core(kind)
    assert loaded is not None
    factory, traits = loaded
    made: list[QueryChecked] = []

    def checked(cfg: Config, st: LogStorage) -> Core:
        made.append(QueryChecked(factory(cfg, st)))
        return made[-1]  # type: ignore[return-value]  # a Core by delegation

    EXTRA_FACTORIES[f"{kind}-query-checked"] = (checked, traits)
    try:
        for seed in SEEDS:
            run_schedule(f"{kind}-query-checked", seed, steps=60)
    finally:
        del EXTRA_FACTORIES[f"{kind}-query-checked"]
    assert sum(c.checked for c in made) > 1000
