"""The ``shard`` nemesis: online shard operations at random while the workload runs.

Faults (a window of one kind is a burst: one operation when it starts, then another every
0.5-1.5 s until it ends; nothing to heal, the shard map only moves forward):
- ``shard-split``: split the shard holding a recently written key, at that key or just
  after it (CockroachDB's Jepsen tests split where the traffic is: a split there catches
  writes in flight on both sides). Past ``max_shards`` shards a split becomes a transfer.
- ``shard-move``: move a random replica of a random shard to a node that holds none
  (``kvstore shard move``: learner, catch up, promote, leadership off, remove; run by the
  placement loop on the meta leader, which also moves replicas on its own to balance).
- ``shard-merge``: merge a random shard with its right neighbour (``kvstore shard
  merge``) when both sit on the same nodes; when no adjacent pair does, align one pair
  whose voters differ in one node with a move (the merge comes in a later operation).
  Merges undo splits, so splits and merges keep each other going.
- ``shard-transfer-leader``: move the leadership of a random shard to another of its
  voters. Not the meta group's: the admin API reads group 0 as group 1 (a proto3 default),
  so it cannot name the meta group.

Rule: an operation that fails (no leader during a partition, a split racing another) is
recorded with its error and is not an anomaly: the nemesis tests the store's safety under
these operations, not their availability. Only the workload's checkers decide validity.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

SHARD_FAULTS = ("shard-split", "shard-transfer-leader", "shard-move", "shard-merge")
MAX_SHARDS = 16
ACTION_TIMEOUT = 15.0


class ShardAdmin(Protocol):
    """The slice of kvstore.client.AsyncClient the shard nemesis uses."""

    async def shards(self) -> list[dict[str, Any]]: ...

    async def split_shard(self, shard: int, at: bytes | str | None = None) -> dict[str, Any]: ...

    async def transfer_leader(self, to: int, group: int = 1) -> int: ...

    async def move_shard(self, shard: int, frm: int, to: int) -> dict[str, Any]: ...

    async def merge_shard(self, shard: int) -> dict[str, Any]: ...

    async def status(
        self, sizes: bool = False, endpoints: Sequence[str] | None = None
    ) -> list[dict[str, Any]]: ...


def split_point(
    shards: Sequence[dict[str, Any]], key: str, rng: random.Random
) -> tuple[int, str] | None:
    """(shard id, split key) for a split at or just after ``key``: strictly inside the
    range of the shard holding it, as a split requires; None if no such key."""
    for at in rng.sample([key, key + "\x00"], 2):
        for s in shards:
            start, end = s["start"], s["end"]
            if start < at and (not end or at < end):
                return int(s["id"]), at
    return None


def _leaders(statuses: Sequence[dict[str, Any]]) -> list[tuple[int, int, list[int]]]:
    """(group, leader node, voters) of every group some node leads."""
    out: dict[int, tuple[int, int, list[int]]] = {}
    for st in statuses:
        for g in st.get("groups", []):
            if g.get("role") == "leader":
                out[int(g["group"])] = (int(g["group"]), int(st["id"]), list(g["voters"]))
    return [out[k] for k in sorted(out)]


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:160]


class ClientAdmin:
    """A :class:`ShardAdmin` over an ``AsyncClient`` (moves go through the meta leader)."""

    def __init__(self, client: Any, move_timeout: float = 10.0) -> None:
        self.client = client
        self.move_timeout = move_timeout

    async def shards(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = await self.client.shards()
        return out

    async def split_shard(self, shard: int, at: bytes | str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = await self.client.split_shard(shard, at)
        return out

    async def transfer_leader(self, to: int, group: int = 1) -> int:
        return int(await self.client.transfer_leader(to, group=group))

    async def merge_shard(self, shard: int) -> dict[str, Any]:
        out: dict[str, Any] = await self.client.merge_shard(shard)
        return out

    async def move_shard(self, shard: int, frm: int, to: int) -> dict[str, Any]:
        from kvstore.client._nodes import move_shard

        out: dict[str, Any] = await move_shard(self.client, shard, frm, to, self.move_timeout)
        return out

    async def status(
        self, sizes: bool = False, endpoints: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = await self.client.status(sizes, endpoints)
        return out


class ShardNemesis:
    """Runs shard operations through an admin client. ``recent``: keys the workload
    wrote lately, newest last (split points are chosen among them)."""

    def __init__(
        self,
        admin: ShardAdmin,
        recent: Callable[[], Sequence[str]],
        rng: random.Random,
        max_shards: int = MAX_SHARDS,
    ) -> None:
        self.admin = admin
        self.recent = recent
        self.rng = rng
        self.max_shards = max_shards

    async def act(self, kind: str) -> str:
        """One operation of ``kind``; returns what it did (or why it did nothing)."""
        try:
            if kind == "shard-split":
                return await asyncio.wait_for(self._split(), ACTION_TIMEOUT)
            if kind == "shard-transfer-leader":
                return await asyncio.wait_for(self._transfer(), ACTION_TIMEOUT)
            if kind == "shard-move":
                return await asyncio.wait_for(self._move(), ACTION_TIMEOUT)
            if kind == "shard-merge":
                return await asyncio.wait_for(self._merge(), ACTION_TIMEOUT)
        except Exception as e:
            return f"{kind} failed: {_err(e)}"
        raise ValueError(f"unknown shard fault {kind!r}")

    async def _split(self) -> str:
        shards = await self.admin.shards()
        if not shards:
            return "split: the cluster is not sharded"
        if len(shards) >= self.max_shards:
            return f"{len(shards)} shards, no split; " + await self._transfer()
        keys = list(self.recent())
        point = split_point(shards, self.rng.choice(keys), self.rng) if keys else None
        if point is None:
            sid = int(self.rng.choice(shards)["id"])
            try:
                out = await self.admin.split_shard(sid)
            except Exception as e:
                return f"split shard {sid} at its middle failed: {_err(e)}"
            return f"split shard {sid} at its middle: new shard {out['right']['id']}"
        sid, at = point
        try:
            out = await self.admin.split_shard(sid, at)
        except Exception as e:
            return f"split shard {sid} at {at!r} failed: {_err(e)}"
        return f"split shard {sid} at {at!r}: new shard {out['right']['id']}"

    async def _merge(self) -> str:
        shards = sorted(await self.admin.shards(), key=lambda s: s["start"])
        pairs = [(a, b) for a, b in itertools.pairwise(shards) if a["end"] == b["start"]]
        if not pairs:
            return "merge: fewer than two shards"
        aligned = [
            (a, b)
            for a, b in pairs
            if set(a["voters"]) == set(b["voters"])
            and not a.get("learners")
            and not b.get("learners")
        ]
        if aligned:
            left, right = self.rng.choice(aligned)
            try:
                out = await self.admin.merge_shard(int(left["id"]))
            except Exception as e:
                return f"merge shard {left['id']} with {right['id']} failed: {_err(e)}"
            return f"merged shard {out['source']} into shard {out['merged']['id']}"
        close = [
            (a, b)
            for a, b in pairs
            if len(set(a["voters"]) ^ set(b["voters"])) == 2
            and len(a["voters"]) == len(b["voters"])
        ]
        if not close:
            return "merge: no adjacent shards on the same nodes, none one move away"
        left, right = self.rng.choice(close)
        (frm,) = set(right["voters"]) - set(left["voters"])
        (to,) = set(left["voters"]) - set(right["voters"])
        sid = int(right["id"])
        try:
            out = await self.admin.move_shard(sid, frm, to)
        except Exception as e:
            return f"align shard {sid} n{frm}->n{to} for a merge failed: {_err(e)}"
        return f"align shard {sid} n{frm}->n{to} for a merge: voters {out['voters']}"

    async def _move(self) -> str:
        shards = await self.admin.shards()
        nodes = {int(st["id"]) for st in await self.admin.status() if st.get("reachable", True)}
        moves = [
            (int(s["id"]), frm, to)
            for s in shards
            for frm in s["voters"]
            for to in sorted(nodes - {*s["voters"], *s.get("learners", ())})
        ]
        if not moves:
            return "move: no shard with a replica to move to a free node"
        sid, frm, to = self.rng.choice(moves)
        try:
            out = await self.admin.move_shard(sid, frm, to)
        except Exception as e:
            return f"move shard {sid} n{frm}->n{to} failed: {_err(e)}"
        return f"move shard {sid} n{frm}->n{to}: voters {out['voters']}"

    async def _transfer(self) -> str:
        groups = [g for g in _leaders(await self.admin.status()) if g[0] != 0 and len(g[2]) > 1]
        if not groups:
            return "transfer-leader: no group with a leader and another voter"
        group, leader, voters = self.rng.choice(groups)
        to = self.rng.choice([v for v in voters if v != leader])
        try:
            now = await self.admin.transfer_leader(to, group=group)
        except Exception as e:
            return f"transfer group {group} n{leader}->n{to} failed: {_err(e)}"
        return f"transfer group {group} n{leader}->n{to}: leader n{now}"

    async def burst(self, kind: str, now: Callable[[], float], end: float) -> list[str]:
        """Operations of ``kind`` one after another, 0.5-1.5 s apart, until ``now()``
        reaches ``end``."""
        done: list[str] = []
        while True:
            await asyncio.sleep(self.rng.uniform(0.5, 1.5))
            if now() >= end:
                return done
            done.append(await self.act(kind))
