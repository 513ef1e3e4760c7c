"""The simulated network and the run loop are deterministic and do what they claim."""

from __future__ import annotations

import random

from kvstore.consensus.types import Message, MessageType

from .network import NetConfig, Network
from .schedule import run_schedule


def _msg(a: int, b: int, i: int = 0) -> Message:
    return Message(type=MessageType.HEARTBEAT, group=0, from_=a, to=b, index=i)


def test_delivery_within_delay_bounds_and_reordered() -> None:
    net = Network(random.Random(1), NetConfig(min_delay=1, max_delay=4))
    for i in range(200):
        net.send(_msg(1, 2, i), now=0)
    assert net.due(0) == []
    got = [m.index for t in range(1, 5) for m in net.due(t)]
    assert sorted(got) == list(range(200))
    assert got != sorted(got)
    assert net.in_flight() == 0


def test_drop_and_duplicate_rates() -> None:
    net = Network(random.Random(2), NetConfig(drop=0.25, duplicate=0.2))
    for i in range(4000):
        net.send(_msg(1, 2, i), now=0)
    delivered = net.due(1)
    assert 0.2 < net.stats["dropped"] / 4000 < 0.3
    assert 0.15 < net.stats["duplicated"] / (4000 - net.stats["dropped"]) < 0.25
    assert len(delivered) == 4000 - net.stats["dropped"] + net.stats["duplicated"]


def test_partition_cuts_both_ways_at_delivery() -> None:
    net = Network(random.Random(3))
    net.send(_msg(1, 2), now=0)
    net.send(_msg(2, 3), now=0)
    net.send(_msg(3, 1), now=0)
    net.partition({1}, [1, 2, 3])  # starts while the messages are in flight
    assert [(m.from_, m.to) for m in net.due(1)] == [(2, 3)]
    net.heal()
    net.send(_msg(1, 2), now=1)
    assert len(net.due(2)) == 1


def test_same_seed_same_run() -> None:
    a = run_schedule("fake", 7)
    b = run_schedule("fake", 7)
    assert (a.steps, a.checks, a.stats) == (b.steps, b.checks, b.stats)
    assert run_schedule("fake", 8).stats != a.stats
