"""The shard nemesis against an in-memory shard map (no cluster): where it splits, whom it
makes leader, and that a failed operation is reported, not raised."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.jepsen.shard_nemesis import ShardNemesis, split_point


class FakeAdmin:
    """A shard map that really splits; leaders per group; ``fail``: every call raises."""

    def __init__(self, bounds: Sequence[str], fail: bool = False) -> None:
        edges = ["", *bounds, ""]
        self.rows = [
            {"id": i + 1, "start": edges[i], "end": edges[i + 1], "voters": [1, 2, 3]}
            for i in range(len(edges) - 1)
        ]
        self.leaders = {0: 1, **{r["id"]: 1 + i % 3 for i, r in enumerate(self.rows)}}
        self.fail = fail
        self.splits: list[tuple[int, str | bytes | None]] = []
        self.moves: list[tuple[int, int, int]] = []
        self.merges: list[tuple[int, int]] = []

    async def shards(self) -> list[dict[str, Any]]:
        if self.fail:
            raise RuntimeError("no meta leader")
        return [dict(r) for r in self.rows]

    async def split_shard(self, shard: int, at: bytes | str | None = None) -> dict[str, Any]:
        row = next(r for r in self.rows if r["id"] == shard)
        assert isinstance(at, str) and row["start"] < at and (not row["end"] or at < row["end"])
        new = {"id": max(r["id"] for r in self.rows) + 1, "start": at, "end": row["end"]}
        new["voters"] = row["voters"]
        row["end"] = at
        self.rows.append(new)
        self.rows.sort(key=lambda r: r["start"])
        self.leaders[new["id"]] = self.leaders[shard]
        self.splits.append((shard, at))
        return {"left": row, "right": new}

    async def transfer_leader(self, to: int, group: int = 1) -> int:
        assert to != self.leaders[group]
        self.leaders[group] = to
        return to

    async def move_shard(self, shard: int, frm: int, to: int) -> dict[str, Any]:
        row = next(r for r in self.rows if r["id"] == shard)
        assert frm in row["voters"] and to not in row["voters"]
        row["voters"] = sorted({*row["voters"], to} - {frm})
        self.moves.append((shard, frm, to))
        return {"voters": row["voters"], "learners": []}

    async def merge_shard(self, shard: int) -> dict[str, Any]:
        i = next(i for i, r in enumerate(self.rows) if r["id"] == shard)
        left, right = self.rows[i], self.rows[i + 1]
        assert left["end"] == right["start"] and set(left["voters"]) == set(right["voters"])
        left["end"] = right["end"]
        del self.rows[i + 1]
        self.leaders.pop(right["id"])
        self.merges.append((shard, right["id"]))
        return {"merged": left, "source": right["id"]}

    async def status(
        self, sizes: bool = False, endpoints: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        if self.fail:
            raise RuntimeError("unreachable")
        return [
            {
                "id": n,
                "groups": [
                    {"group": g, "role": "leader" if lead == n else "follower", "voters": [1, 2, 3]}
                    for g, lead in self.leaders.items()
                ],
            }
            for n in (1, 2, 3, 4)
        ]


def test_splits_land_at_recent_keys_and_keep_the_map_tiled() -> None:
    admin = FakeAdmin(["g", "n", "t"])
    recent = ["ar0", "hr1", "or2", "vr3", "cr4", "jr5", "qr6", "xr7"]
    nem = ShardNemesis(admin, lambda: recent, random.Random(5), max_shards=10)
    outs = [asyncio.run(nem.act("shard-split")) for _ in range(30)]
    assert len(admin.rows) == 10, "splits stop at max_shards"
    assert "10 shards, no split; transfer group" in outs[-1]
    assert {at.rstrip("\x00") for _, at in admin.splits if isinstance(at, str)} <= set(recent)
    starts = [r["start"] for r in admin.rows]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    for a, b in zip(admin.rows, admin.rows[1:], strict=False):
        assert a["end"] == b["start"]


def test_transfer_moves_a_shard_leader_to_another_voter() -> None:
    moved = set()
    for seed in range(20):
        admin = FakeAdmin(["n"])
        before = dict(admin.leaders)
        out = asyncio.run(
            ShardNemesis(admin, list, random.Random(seed)).act("shard-transfer-leader")
        )
        changed = [g for g in before if before[g] != admin.leaders[g]]
        assert len(changed) == 1 and f"group {changed[0]}" in out
        moved.add(changed[0])
    assert moved == {1, 2}, "shards only: the admin API cannot name the meta group (0)"


def test_move_takes_a_replica_to_a_node_without_one() -> None:
    admin = FakeAdmin(["n"])
    nem = ShardNemesis(admin, list, random.Random(4))
    outs = [asyncio.run(nem.act("shard-move")) for _ in range(6)]
    assert len(admin.moves) == 6, outs
    assert all(len(r["voters"]) == 3 for r in admin.rows)


def test_merges_keep_the_map_tiled_and_align_shards_first() -> None:
    admin = FakeAdmin(["g", "n", "t"])
    admin.rows[2]["voters"] = [1, 2, 4]  # [n, t) is one move away from its neighbours
    admin.rows[3]["voters"] = [4, 5, 6]  # [t, +inf) three moves away
    nem = ShardNemesis(admin, list, random.Random(3))
    outs = [asyncio.run(nem.act("shard-merge")) for _ in range(5)]
    assert [r["start"] for r in admin.rows] == ["", "t"], outs
    assert admin.rows[0]["end"] == "t" and admin.merges and admin.moves, outs
    assert "no adjacent shards on the same nodes, none one move away" in asyncio.run(
        nem.act("shard-merge")
    )
    starts = [r["start"] for r in admin.rows]
    for a, b in zip(admin.rows, admin.rows[1:], strict=False):
        assert a["end"] == b["start"]
    assert starts == sorted(starts)


@pytest.mark.parametrize(
    "kind", ["shard-split", "shard-transfer-leader", "shard-move", "shard-merge"]
)
def test_a_failed_operation_is_reported_not_raised(kind: str) -> None:
    nem = ShardNemesis(FakeAdmin(["n"], fail=True), lambda: ["ar0"], random.Random(1))
    assert "failed" in asyncio.run(nem.act(kind))


@given(
    bounds=st.lists(st.text("abcz\x00", min_size=1, max_size=3), unique=True, max_size=5),
    key=st.text("abcz\x00", max_size=4),
    seed=st.integers(0, 100),
)
def test_split_point_is_strictly_inside_the_shard_holding_it(
    bounds: list[str], key: str, seed: int
) -> None:
    rows = FakeAdmin(sorted(bounds)).rows
    point = split_point(rows, key, random.Random(seed))
    if point is None:
        # only when neither the key nor the key + NUL is strictly inside its shard
        assert all(any(r["start"] == at for r in rows) for at in (key, key + "\x00"))
        return
    sid, at = point
    row = next(r for r in rows if r["id"] == sid)
    assert at in (key, key + "\x00")
    assert row["start"] < at and (not row["end"] or at < row["end"])
