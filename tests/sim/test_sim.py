"""Seeded random schedules against each real consensus core (skipped until it imports).

The default run checks DEFAULT_SCHEDULES[kind] schedules of STEPS steps each (plus the
healing phase); every step runs all safety checkers, every schedule ends with the
liveness check. A failure names its seed and the pytest command that replays it.
"""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from .cluster import load_core
from .conftest import SimArgs
from .schedule import SimFailure, run_schedule

KINDS = ("raft", "paxos")
DEFAULT_SCHEDULES = {"raft": 1500, "paxos": 1000}
STEPS = 150
SOAK_SCHEDULES = 5000
SOAK_STEPS = 1500


def _run_many(
    kind: str, seeds: list[int], steps: int, replay: str, membership: bool = True
) -> tuple[Counter[str], int, int]:
    totals: Counter[str] = Counter()
    total_steps = max_heal = 0
    for seed in seeds:
        try:
            r = run_schedule(kind, seed, steps=steps, membership=membership)
        except SimFailure as e:
            pytest.fail(f"{e}\nreplay: {replay} --sim-seed {seed}", pytrace=False)
        totals += r.stats
        total_steps += r.steps
        max_heal = max(max_heal, r.heal_ticks)
    return totals, total_steps, max_heal


def _require(kind: str) -> None:
    if load_core(kind) is None:
        pytest.skip(f"the {kind} core does not import yet")


@pytest.mark.parametrize("kind", KINDS)
def test_random_schedules(kind: str, sim_args: SimArgs) -> None:
    _require(kind)
    replay = f"pytest tests/sim -k 'test_random_schedules and {kind}'"
    if sim_args.seed is not None:
        _run_many(kind, [sim_args.seed], STEPS, replay)
        return
    n = sim_args.schedules or DEFAULT_SCHEDULES[kind]
    t0 = time.process_time()
    totals, steps, max_heal = _run_many(kind, list(range(n)), STEPS, replay)
    cpu = time.process_time() - t0
    print(
        f"\n{kind}: {n} schedules, {steps} steps, {totals['delivered']} messages delivered, "
        f"{totals['applied']} entries applied, max {max_heal} ticks to heal, {cpu:.1f}s CPU"
    )
    if n >= 200:
        # The schedules must really exercise the faults they claim to (a sim that never
        # crashes or installs a snapshot would pass vacuously).
        for what in ("crashes", "snapshots", "installs", "partitioned", "duplicated", "applied"):
            assert totals[what] > 0, f"no {what} in {n} schedules: {totals}"


@pytest.mark.soak
@pytest.mark.parametrize("kind", KINDS)
def test_soak_schedules(kind: str, sim_args: SimArgs) -> None:
    _require(kind)
    replay = f"pytest tests/sim -k 'test_soak_schedules and {kind}' --soak"
    if sim_args.seed is not None:
        seeds = [sim_args.seed]
    else:
        base = random.SystemRandom().randrange(1 << 40)
        print(f"\n{kind} soak: seeds from {base}")
        seeds = list(range(base, base + (sim_args.schedules or SOAK_SCHEDULES)))
    _run_many(kind, seeds, SOAK_STEPS, replay)


def test_fake_core_passes() -> None:
    """The harness against a core that is safe by construction: no check may fire."""
    totals, _, _ = _run_many(
        "fake", list(range(60)), STEPS, "pytest tests/sim -k test_fake_core_passes"
    )
    for what in ("crashes", "snapshots", "partitioned", "applied"):
        assert totals[what] > 0, totals
