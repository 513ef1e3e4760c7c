"""The real driver's Ready protocol (early leader sends, steps between ready() and advance(),
conf changes applied before the persist, apply in the persist's transaction, crashes at any
point) over the real Raft core: seeded schedules, every safety checker, and no lost
acknowledged write (tests/sim/driver_model.py says what is modelled).

Replay one seed: pytest tests/sim/test_driver_interleaving.py --sim-seed N
"""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from .checkers import SafetyViolation
from .conftest import SimArgs
from .driver_model import run_driver_schedule

DEFAULT_SCHEDULES = 1500
STEPS = 200
SOAK_SCHEDULES = 3000
SOAK_STEPS = 1000
REPLAY = "pytest tests/sim/test_driver_interleaving.py -k schedules --sim-seed"


def _run(seeds: list[int], steps: int) -> Counter[str]:
    totals: Counter[str] = Counter()
    for seed in seeds:
        try:
            totals += run_driver_schedule(seed, steps=steps)
        except SafetyViolation as e:
            pytest.fail(f"{e}\nreplay: {REPLAY} {seed} (steps={steps})", pytrace=False)
    return totals


def test_driver_interleaving_schedules(sim_args: SimArgs) -> None:
    if sim_args.seed is not None:
        _run([sim_args.seed], SOAK_STEPS if sim_args.soak else STEPS)
        return
    n = sim_args.schedules or DEFAULT_SCHEDULES
    t0 = time.process_time()
    totals = _run(list(range(n)), STEPS)
    print(
        f"\ndriver interleaving: {n} schedules of {STEPS} steps, {totals['delivered']} "
        f"messages ({totals['stepped_in_flight']} stepped between ready and advance), "
        f"{totals['early_sends']} early sends, {totals['crashes']} crashes "
        f"({totals['crash_lost_txn']} lost an in-flight transaction), {totals['acked']} "
        f"writes acknowledged, {time.process_time() - t0:.1f}s CPU"
    )
    if n >= 200:
        # The schedules must exercise what they claim to (a vacuous pass is a failure).
        for what in (
            "stepped_in_flight",
            "early_sends",
            "crash_lost_txn",
            "acked",
            "installs",
            "snapshots",
            "conf_changes_applied",
            "reads",
            "partitioned",
            "duplicated",
            "transfers",
        ):
            assert totals[what] > 0, f"no {what} in {n} schedules: {totals}"


@pytest.mark.soak
def test_driver_interleaving_soak(sim_args: SimArgs) -> None:
    base = random.SystemRandom().randrange(1 << 40)
    print(f"\ndriver interleaving soak: seeds from {base}, {SOAK_STEPS} steps")
    _run(list(range(base, base + (sim_args.schedules or SOAK_SCHEDULES))), SOAK_STEPS)


def test_checks_catch_an_unsafe_driver() -> None:
    """Sending every message before its persist (votes, append answers) must be caught:
    the model can fail."""
    caught = 0
    for seed in range(40):
        try:
            run_driver_schedule(seed, sabotage=True)
        except SafetyViolation:
            caught += 1
    assert caught > 0
