"""Simulation fixtures: the fakes are registered, and the shared options are read here."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from .fakecore import register

register()


@dataclass(frozen=True, slots=True)
class SimArgs:
    seed: int | None
    """--sim-seed: replay exactly this seed."""
    schedules: int | None
    """--sim-schedules: schedules per test instead of the default."""
    soak: bool


@pytest.fixture
def sim_args(request: pytest.FixtureRequest) -> SimArgs:
    cfg = request.config
    return SimArgs(
        seed=cfg.getoption("sim_seed"),
        schedules=cfg.getoption("sim_schedules"),
        soak=bool(cfg.getoption("soak")),
    )
