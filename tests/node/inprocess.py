"""Nodes in the test's own event loop (real gRPC on loopback, real LMDB), for tests that
look inside a node while it serves.

Rule: ports are picked at random in 17000-17999 (the range of the subprocess clusters of
tests/integration/harness.py too) and checked free just before the nodes bind them
(parallel runs rarely collide); the caller stops what it started
(``stop_nodes`` in its ``finally``), so a failing test leaves no server in the loop.
"""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path
from typing import Any

from kvstore.consensus.types import Role
from kvstore.server.process import Node, ServeOptions


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free now."""
    out: list[int] = []
    while len(out) < n:
        p = random.randint(17000, 17999)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
        if p not in out:
            out.append(p)
    return out


def free_endpoint() -> str:
    return f"127.0.0.1:{free_ports(1)[0]}"


def node_options(tmp_path: Path, n: int = 3, **options: Any) -> list[ServeOptions]:
    """Options of an ``n``-node cluster on free ports (data in ``tmp_path``/n<id>);
    ``options``: any other ServeOptions field, the same on every node."""
    peers = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(free_ports(n))}
    return [
        ServeOptions(
            id=i, listen=peers[i], peers=peers, data_dir=str(tmp_path / f"n{i}"), **options
        )
        for i in peers
    ]


async def start_nodes(
    tmp_path: Path, n: int = 3, **options: Any
) -> tuple[dict[int, str], list[Node]]:
    """Start an ``n``-node cluster (see ``node_options``): its endpoints by node id, and
    its nodes in id order."""
    opts = node_options(tmp_path, n, **options)
    nodes = [Node(o) for o in opts]
    for node in nodes:
        await node.start()
    return dict(opts[0].peers), nodes


async def start_node(tmp_path: Path, **options: Any) -> tuple[Node, str]:
    """A one-node cluster with its data in ``tmp_path``, and its endpoint."""
    addr = free_endpoint()
    node = Node(ServeOptions(id=1, listen=addr, peers={1: addr}, data_dir=str(tmp_path), **options))
    await node.start()
    return node, addr


async def stop_nodes(nodes: list[Node]) -> None:
    for node in nodes:
        await node.stop()


async def leader(nodes: list[Node], group: int = 1) -> Node:
    """The node leading ``group`` (within 10 s)."""
    for _ in range(400):
        for n in nodes:
            g = n.driver.groups.get(group)
            if g is not None and g.role == Role.LEADER:
                return n
        await asyncio.sleep(0.025)
    raise AssertionError(f"no leader of group {group}")
