"""The seeded fault schedule and the host choices of the nemeses (pure, no root needed)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.jepsen.hosts import Host
from kvstore.jepsen.nemesis import KINDS, Nemesis, halves, minority, ring_views, schedule
from kvstore.jepsen.shard_nemesis import SHARD_FAULTS

HOSTS = [Host(index=i) for i in range(1, 6)]


@settings(max_examples=200)
@given(
    nemesis=st.sampled_from(sorted(KINDS)),
    limit=st.floats(1, 600),
    interval=st.floats(0.5, 30),
    seed=st.integers(0, 2**32),
)
def test_windows_are_ordered_apart_and_healed_before_the_limit(
    nemesis: str, limit: float, interval: float, seed: int
) -> None:
    plan = schedule(nemesis, limit, interval, random.Random(seed))
    for w in plan:
        assert 0 < w.start < w.end <= limit
        assert set(w.kind.split("+")) <= set(KINDS[nemesis])
    for a, b in itertools.pairwise(plan):
        assert a.end < b.start, "one fault at a time, with a quiet gap"


def test_schedule_is_a_function_of_the_seed() -> None:
    a = schedule("all", 120, 5, random.Random(9))
    b = schedule("all", 120, 5, random.Random(9))
    assert a == b and len(a) >= 8
    assert len({w.kind for w in a}) >= 4, "all mixes kinds"
    assert any("+" in w.kind for w in schedule("all", 600, 5, random.Random(9)))
    assert schedule("none", 120, 5, random.Random(9)) == []


def test_shard_faults_only_on_a_sharded_cluster() -> None:
    plain = [w.kind for w in schedule("all", 600, 5, random.Random(4))]
    sharded = [w.kind for w in schedule("all", 600, 5, random.Random(4), sharded=True)]
    assert not any(k in SHARD_FAULTS for w in plain for k in w.split("+"))
    assert not any(k == "member" for w in sharded for k in w.split("+"))
    assert {k for w in sharded for k in w.split("+")} >= set(SHARD_FAULTS)
    assert any("+shard-" in w for w in sharded), "a shard operation under a network fault"
    assert schedule("shard", 120, 5, random.Random(4)) == []
    assert {w.kind for w in schedule("shard", 600, 5, random.Random(4), sharded=True)} == set(
        SHARD_FAULTS
    )


def test_halves_split_everyone_into_two_sides() -> None:
    a, b = halves(HOSTS, random.Random(1))
    assert sorted([len(a), len(b)]) == [2, 3]
    assert set(a) | set(b) == set(HOSTS) and not set(a) & set(b)


@pytest.mark.parametrize("n", [3, 4, 5, 7])
def test_ring_every_host_hears_a_distinct_majority(n: int) -> None:
    hosts = [Host(index=i) for i in range(1, n + 1)]
    views = ring_views(hosts, random.Random(n))
    assert set(views) == set(hosts)
    for h, sees in views.items():
        assert h in sees and len(set(sees)) == n // 2 + 1
    assert len({frozenset(v) for v in views.values()}) == n


@settings(max_examples=100)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 9), with_leader=st.booleans())
def test_minority_is_never_a_majority(seed: int, n: int, with_leader: bool) -> None:
    hosts = [Host(index=i) for i in range(1, n + 1)]
    leader = hosts[0] if with_leader else None
    chosen = minority(hosts, leader, random.Random(seed))
    assert 1 <= len(chosen) <= max(1, (n - 1) // 2)
    assert len(set(chosen)) == len(chosen)


def test_host_addresses_stay_in_the_private_subnet() -> None:
    assert [h.ip for h in HOSTS] == [f"10.77.0.{10 + i}" for i in range(1, 6)]
    assert {h.ns for h in HOSTS} == {f"kvj{i}" for i in range(1, 6)}


class FakeNet:
    def __init__(self, hosts: list[Host]) -> None:
        self.hosts = hosts
        self.cuts: list[tuple[Host, tuple[Host, ...]]] = []
        self.losses: list[tuple[Host, float]] = []
        self.heals = 0

    def cut(self, host: Host, others: list[Host]) -> None:
        self.cuts.append((host, tuple(others)))

    def partition(self, comps: list[list[Host]]) -> None:
        for comp in comps:
            for h in comp:
                self.cut(h, [o for o in self.hosts if o not in comp])

    def lose(self, host: Host, p: float) -> None:
        self.losses.append((host, p))

    def heal(self) -> None:
        self.heals += 1
        self.cuts.clear()
        self.losses.clear()


class FakeProcs:
    def __init__(self) -> None:
        self.down: set[int] = set()
        self.paused: set[int] = set()
        self.clock: dict[int, float] = {}
        self.full: set[int] = set()
        self.damaged: set[int] = set()

    def kill(self, h: Host) -> None:
        self.down.add(h.index)

    def restart(self, h: Host) -> None:
        self.down.discard(h.index)

    def pause(self, h: Host) -> None:
        self.paused.add(h.index)

    def resume(self, h: Host) -> None:
        self.paused.discard(h.index)

    def set_clock_offset(self, h: Host, s: float) -> None:
        self.clock[h.index] = s

    def fill_disk(self, h: Host) -> str:
        self.full.add(h.index)
        return "filled"

    def free_disk(self, h: Host) -> None:
        self.full.discard(h.index)

    def damage(self, h: Host, rng: random.Random) -> str:
        self.damaged.add(h.index)
        return f"flipped a bit of n{h.index}"


class FakeMembers:
    def __init__(self) -> None:
        self.removed: set[int] = set()

    def remove(self, h: Host) -> str:
        self.removed.add(h.index)
        return f"removed n{h.index}"

    def add_back(self, h: Host) -> str:
        self.removed.discard(h.index)
        return f"n{h.index} back"


@pytest.mark.parametrize(
    "kind",
    [
        *(k for k in KINDS["all"] if k not in SHARD_FAULTS),
        *("partition-leader+kill", "loss+clock", "partition-halves+member"),
    ],
)
def test_every_fault_starts_and_heals(kind: str) -> None:
    net, procs, members = FakeNet(HOSTS), FakeProcs(), FakeMembers()
    nem = Nemesis(net, procs, random.Random(3), members)  # type: ignore[arg-type]
    what = nem.start(kind, leader=HOSTS[2])
    assert what
    assert (
        net.cuts
        or net.losses
        or procs.down
        or procs.paused
        or any(procs.clock.values())
        or members.removed
        or procs.full
        or procs.damaged
    )
    if kind == "partition-leader":
        assert "n3" in what and all(h == HOSTS[2] or HOSTS[2] in o for h, o in net.cuts)
    if "member" in kind:
        assert len(members.removed) == 1
    healed = nem.heal()
    assert not net.cuts and not net.losses and not procs.down and not procs.paused
    assert not any(procs.clock.values()) and not members.removed and not procs.full
    if kind == "disk-damage":  # the damaged node is wiped and added back
        assert "removed" in healed and "back" in healed
    if "member" in kind:
        assert "back" in healed
    if kind == "partition-halves+member":  # the network first: adding back needs it
        assert healed.index("network") < healed.index("back")
    assert nem.heal() == "nothing to heal"


def test_member_removes_the_leader_about_half_the_time() -> None:
    victims = []
    for seed in range(40):
        members = FakeMembers()
        nem = Nemesis(FakeNet(HOSTS), FakeProcs(), random.Random(seed), members)  # type: ignore[arg-type]
        nem.start("member", leader=HOSTS[0])
        victims.append(members.removed.pop())
    assert 8 <= victims.count(1) <= 32 and len(set(victims)) >= 3


def test_deployments_leave_out_the_faults_they_cannot_make() -> None:
    """--hosts compose|vms: no clock, member or disk fault is planned, alone or combined,
    and the namespace hosts' plans for a seed are unchanged by the new parameter."""
    from kvstore.jepsen.deployments import UNSUPPORTED

    plan = schedule("all", 2000.0, 5.0, random.Random(7), unsupported=UNSUPPORTED)
    kinds = {part for w in plan for part in w.kind.split("+")}
    assert kinds and not kinds & set(UNSUPPORTED), kinds
    assert {"kill", "pause", "partition-leader"} <= kinds
    same = schedule("all", 300.0, 5.0, random.Random(3))
    assert same == schedule("all", 300.0, 5.0, random.Random(3), unsupported=())
    assert any(k in w.kind for w in same for k in UNSUPPORTED)


def test_the_history_names_the_deployments_own_faults() -> None:
    """--hosts compose/vms: the history says docker pause / virsh destroy, not SIGSTOP."""
    from kvstore.jepsen.deployments import ComposeDeployment, VmDeployment

    for cls in (ComposeDeployment, VmDeployment):

        class Procs(FakeProcs):
            fault_names = cls.fault_names

        nem = Nemesis(FakeNet(HOSTS), Procs(), random.Random(1))  # type: ignore[arg-type]
        kill = nem.start("kill")
        assert kill.startswith(cls.fault_names["kill"] + " {"), kill
        assert nem.heal().startswith(cls.fault_names["restart"] + " n"), cls
        pause = nem.start("pause")
        assert pause.startswith(cls.fault_names["pause"] + " {"), pause
        assert nem.heal().startswith(cls.fault_names["resume"] + " n"), cls
    nem = Nemesis(FakeNet(HOSTS), FakeProcs(), random.Random(1))  # type: ignore[arg-type]
    assert nem.start("pause").startswith("SIGSTOP {") and nem.heal().startswith("SIGCONT n")
