"""A 3-node Raft group over MemoryStorage elects a leader and commits a proposal."""

from __future__ import annotations

import random

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.raft import RawNode
from kvstore.consensus.types import Config, Message, Role


def _cluster(n: int = 3) -> tuple[dict[int, RawNode], dict[int, MemoryStorage]]:
    ids = set(range(1, n + 1))
    stores = {i: MemoryStorage(voters=ids) for i in ids}
    nodes = {i: RawNode(Config(id=i, rng=random.Random(i)), stores[i]) for i in ids}
    return nodes, stores


def _run(nodes: dict[int, RawNode], stores: dict[int, MemoryStorage]) -> list[tuple[int, bytes]]:
    applied: list[tuple[int, bytes]] = []
    for _ in range(50):
        msgs: list[Message] = []
        for i, node in nodes.items():
            if not node.has_ready():
                continue
            rd = node.ready()
            if rd.snapshot:
                stores[i].apply_snapshot(rd.snapshot)
            stores[i].append(rd.entries)
            if rd.hard_state:
                stores[i].set_hard_state(rd.hard_state)
            applied.extend((i, e.data) for e in rd.committed)
            msgs.extend(rd.messages)
            node.advance(rd)
        if not msgs:
            break
        for m in msgs:
            nodes[m.to].step(m)
    return applied


def test_elect_and_commit() -> None:
    nodes, stores = _cluster()
    nodes[1].campaign()
    _run(nodes, stores)
    assert nodes[1].status().role is Role.LEADER
    pid = nodes[1].propose(b"x")
    applied = _run(nodes, stores)
    assert sorted(applied) == [(1, b"x"), (2, b"x"), (3, b"x")]
    assert {n.status().commit for n in nodes.values()} == {pid.index}


def test_elected_by_ticks() -> None:
    nodes, stores = _cluster()
    for _ in range(30):
        for node in nodes.values():
            node.tick()
        _run(nodes, stores)
    leaders = [i for i, n in nodes.items() if n.status().role is Role.LEADER]
    assert len(leaders) == 1
    assert all(n.status().leader == leaders[0] for n in nodes.values())
