"""Hypothesis drives the simulation: it generates fault plans, network and core settings
and a seed, and on a failure shrinks them to a minimal failing schedule.

Runs are derandomized (the same examples every run, so CI is reproducible); with
--soak hypothesis explores fresh examples, many more of them.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .cluster import CoreParams, load_core
from .conftest import SimArgs
from .network import NetConfig
from .plans import Fault, FaultKind, SimOptions
from .schedule import SimFailure, run_schedule

STEPS = 120
EXAMPLES = 200
SOAK_EXAMPLES = 2000
REPLAY = "pytest tests/sim/test_sim_hypothesis.py -k"

at = st.integers(0, STEPS - 1)
nodes = st.integers(1, 5)
nets = st.builds(
    NetConfig,
    drop=st.sampled_from((0.0, 0.05, 0.3)),
    duplicate=st.sampled_from((0.0, 0.1)),
    max_delay=st.integers(1, 6),
)
faults = st.one_of(
    st.builds(
        Fault,
        at=at,
        kind=st.just(FaultKind.PARTITION),
        side=st.frozensets(nodes, min_size=1, max_size=2),
    ),
    st.builds(
        Fault,
        at=at,
        kind=st.sampled_from(
            (
                FaultKind.CRASH,
                FaultKind.CRASH_MID_READY,
                FaultKind.CRASH_BEFORE_ADVANCE,
                FaultKind.RESTART,
                FaultKind.RESTART_FRESH,
                FaultKind.SNAPSHOT,
            )
        ),
        node=nodes,
        keep=st.integers(0, 4),
    ),
    st.builds(
        Fault,
        at=at,
        kind=st.sampled_from(
            (
                FaultKind.ISOLATE_LEADER,
                FaultKind.CRASH_LEADER,
                FaultKind.HEAL,
                FaultKind.TRANSFER,
                FaultKind.ADD_LEARNER,
                FaultKind.PROMOTE,
                FaultKind.REMOVE,
                FaultKind.REPLACE,
                FaultKind.DEMOTE,
            )
        ),
    ),
    st.builds(Fault, at=at, kind=st.just(FaultKind.NET), net=nets),
)
plans = st.lists(faults, max_size=25).map(lambda fs: sorted(fs, key=lambda f: f.at))
options = st.builds(
    SimOptions,
    nodes=st.sampled_from((3, 5)),
    steps=st.just(STEPS),
    net=nets,
    params=st.builds(
        CoreParams,
        election_tick=st.sampled_from((3, 5, 10)),
        pre_vote=st.booleans(),
        check_quorum=st.booleans(),
        max_size_per_msg=st.sampled_from((32, 1 << 20)),
        max_inflight_msgs=st.sampled_from((1, 256)),
    ),
    propose_prob=st.sampled_from((0.1, 0.5)),
    read_prob=st.sampled_from((0.0, 0.2)),
    tick_prob=st.sampled_from((0.6, 1.0)),
    membership=st.booleans(),
)


def _check(kind: str, sim_args: SimArgs) -> None:
    if load_core(kind) is None:
        pytest.skip(f"the {kind} core does not import yet")
    examples = SOAK_EXAMPLES if sim_args.soak else EXAMPLES
    if sim_args.schedules:
        examples = sim_args.schedules

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=not sim_args.soak,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
    @given(seed=st.integers(0, 1 << 32), opts=options, plan=plans)
    def schedule(seed: int, opts: SimOptions, plan: list[Fault]) -> None:
        try:
            run_schedule(kind, seed, opts=opts, plan=plan)
        except SimFailure as e:
            # Derandomized: rerunning the test replays and reshrinks this same failure.
            raise SimFailure(
                e.kind, e.seed, f"{e.reason}\nreplay: {REPLAY} '{kind}'", [], ""
            ) from e

    schedule()


@pytest.mark.parametrize("kind", ["raft", "paxos", "fake"])
def test_hypothesis_schedules(kind: str, sim_args: SimArgs) -> None:
    _check(kind, sim_args)


def test_hypothesis_shrinks_a_broken_core_to_a_minimal_schedule() -> None:
    """A core that corrupts what it applies fails whatever the faults; hypothesis must
    find that and shrink the fault plan away entirely."""
    failing: list[list[Fault]] = []

    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(seed=st.integers(0, 1 << 32), opts=options, plan=plans)
    def schedule(seed: int, opts: SimOptions, plan: list[Fault]) -> None:
        try:
            run_schedule("fake-corrupt-apply", seed, opts=opts, plan=plan)
        except SimFailure:
            failing.append(plan)
            raise

    with pytest.raises(SimFailure, match="state machine safety"):
        schedule()
    assert failing[-1] == []
