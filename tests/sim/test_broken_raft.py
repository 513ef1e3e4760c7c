"""The default schedules catch deliberately broken Raft cores (broken_raft.py).

Each broken core must fail some of the first default seeds (the seeds
test_random_schedules runs) with the failure its bug causes. For the rate over the whole
default run: ``pytest tests/sim/test_broken_raft.py --sim-schedules 3000 -s``
(tests/sim/FINDINGS.md records the measured rates).
"""

from __future__ import annotations

import re
import time

import pytest

from .broken_raft import FIGURE8, NO_READ_RETRY
from .conftest import SimArgs
from .schedule import SimFailure, run_schedule

SEEDS = 40


@pytest.mark.parametrize(
    ("kind", "expect"),
    [
        (FIGURE8, r"leader completeness|state machine safety"),
        (NO_READ_RETRY, r"liveness: strong read .* made at a leader before healing"),
    ],
)
def test_broken_raft_is_caught(kind: str, expect: str, sim_args: SimArgs) -> None:
    n = sim_args.schedules or SEEDS
    t0 = time.process_time()
    caught = []
    for seed in range(n):
        try:
            run_schedule(kind, seed)
        except SimFailure as e:
            if not re.search(expect, e.reason):
                pytest.fail(f"{kind} seed {seed} failed otherwise: {e.reason}")
            caught.append(seed)
    cpu = time.process_time() - t0
    print(f"\n{kind}: caught at {len(caught)} of {n} seeds ({cpu:.1f}s CPU): {caught[:20]}")
    assert caught, f"{kind}: no default seed in 0..{n - 1} catches it"
