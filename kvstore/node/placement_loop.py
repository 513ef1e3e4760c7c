"""The placement loop: runs the placement planner on the meta group's leader and executes
its steps as conf changes in the shards' own logs (docs/sharding.md, "Placement and
repair").

Rules this module keeps:
- Only the node that leads the meta group (0) acts; every other node's loop idles and
  forgets what it observed, so a new meta leader starts its down-timers from its own
  observations (it may repair later than the old leader would have, never sooner).
- Liveness is this node's phi-accrual failure detector; a node counts as down for
  ``down_after`` seconds only if it was not judged alive at any round in between.
- Every step is one admin RPC to the group's leader (AddLearner, PromoteLearner,
  RemoveMember, TransferLeadership), so each is a conf change committed in the group's
  log; the next round plans again from what the groups report. A step that fails is
  simply planned again (or differently) next round.
- Balancing is held down (``pl.HOLD_DOWN_S``) for a group whose leader or membership
  this loop saw change recently, so a user's ``shard transfer-leader`` or ``move`` (which
  the meta leader does not otherwise hear of) and the loop's own last step are not undone
  at once; a new meta leader treats everything as just changed.
- Draining (decommission) is held by the loop in memory: the operator's command keeps
  asserting it until the node holds nothing (``kvstore node decommission`` waits).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
import grpc.aio

from kvstore._pb import admin_pb2, admin_pb2_grpc
from kvstore.consensus.types import ConfChange, ConfChangeType, ConsensusError
from kvstore.node import log
from kvstore.node.driver import NodeDriver
from kvstore.node.errors import DeadlineOp, InvalidOp, OpError
from kvstore.node.members import with_address
from kvstore.node.meta import MetaClient
from kvstore.node.transport import PeerTransport
from kvstore.shard import placement as pl
from kvstore.shard.descriptor import META_GROUP

PERIOD_S = 2.0
DOWN_AFTER_S = 30.0
REBALANCE_AFTER_S = 30.0
"""A new meta leader repairs at once but balances only after leading this long: its
view of the cluster is young, and a cluster just started is left as its operator
laid it out for a while."""
ADOPT_LEARNER_S = 30.0
"""A learner this loop did not add (an operator's, or one a former meta leader added) is
promoted only after being seen this long, so an operator's own membership steps are
not raced."""
STATUS_TIMEOUT_S = 1.5
STEP_TIMEOUT_S = 10.0
CATCHUP_SLACK = 64
"""A learner whose applied index is this close to its leader's commit counts as caught
up when the leader does not track progress (Multi-Paxos)."""


@dataclass(slots=True)
class Observed:
    """One round's view of the cluster (kept for ``kvstore node list``)."""

    nodes: list[pl.NodeInfo]
    groups: list[pl.GroupInfo]
    endpoints: dict[int, str]


class PlacementLoop:
    def __init__(
        self,
        driver: NodeDriver,
        transport: PeerTransport,
        meta: MetaClient,
        *,
        replicas: int,
        down_after: float = DOWN_AFTER_S,
        period: float = PERIOD_S,
    ) -> None:
        self.driver = driver
        self.transport = transport
        self.meta = meta
        self.replicas = replicas
        self.down_after = down_after
        self.period = period
        self.draining: set[int] = set()
        self.moves: dict[int, tuple[int, int]] = {}
        """shard -> (from, to): operator moves under way (``move``)."""
        self._since: dict[int, float] = {}
        self._led_since: float | None = None
        self._ours: set[tuple[int, int]] = set()
        """(group, node) learners this loop added."""
        self._learner_seen: dict[tuple[int, int], float] = {}
        self._leader_seen: dict[int, tuple[int, float]] = {}
        """group -> (leader, first seen leading)"""
        self._members_seen: dict[int, tuple[tuple[int, ...], tuple[int, ...], float]] = {}
        """group -> (voters, learners, first seen so)"""
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._task: asyncio.Task[None] | None = None
        self.last: Observed | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="placement")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close()

    def _stub(self, endpoint: str) -> admin_pb2_grpc.AdminStub:
        ch = self._channels.get(endpoint)
        if ch is None:
            ch = self._channels[endpoint] = self.meta.node_channel(endpoint)  # TLS too
        return admin_pb2_grpc.AdminStub(ch)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            if not self.meta.leads_meta():
                self._led_since = None
                self._ours.clear()
                self._learner_seen.clear()
                self._leader_seen.clear()
                self._members_seen.clear()
                self._since.clear()
                self.draining.clear()
                self.moves.clear()
                self.last = None
                continue
            try:
                await self.round()
            except Exception as e:  # a failed round is retried next period
                log.event("placement_round_failed", level=30, error=repr(e))

    # -- observing -------------------------------------------------------------------
    def liveness(self) -> list[pl.NodeInfo]:
        """Every known node by this node's failure detector (this node: alive)."""
        now = time.monotonic()
        me = self.driver.config.node_id
        peers = {p.id: p for p in self.transport.peer_status()}
        out = []
        for n in sorted(self.driver.endpoints):
            if n == me:
                state, phi = pl.ALIVE, 0.0
            elif n in peers:
                state, phi = peers[n].state, min(peers[n].phi, 1e9)
            else:
                state, phi = "unknown", 0.0
            if state == pl.ALIVE:
                self._since.pop(n, None)
                down_for = 0.0
            else:
                down_for = now - self._since.setdefault(n, now)
            out.append(
                pl.NodeInfo(
                    n, liveness=state, phi=phi, down_for=down_for, draining=n in self.draining
                )
            )
        return out

    async def _status(self, endpoint: str) -> Any:
        try:
            return await self._stub(endpoint).Status(
                admin_pb2.StatusRequest(), timeout=STATUS_TIMEOUT_S
            )
        except grpc.aio.AioRpcError:
            return None

    async def observe(self) -> Observed:
        nodes = self.liveness()
        endpoints = dict(self.driver.endpoints)
        ids = [n.id for n in nodes if n.liveness != "dead"]
        answers = await asyncio.gather(*(self._status(endpoints[n]) for n in ids))
        statuses = {n: st for n, st in zip(ids, answers, strict=True) if st is not None}
        disk = {n: (st.disk_used_bytes, st.disk_capacity_bytes) for n, st in statuses.items()}
        nodes = [
            pl.NodeInfo(
                x.id,
                liveness=x.liveness,
                phi=x.phi,
                down_for=x.down_for,
                draining=x.draining,
                disk_used=disk.get(x.id, (0, 0))[0],
                disk_cap=disk.get(x.id, (0, 0))[1],
            )
            for x in nodes
        ]
        groups = self._held(self._adopted(groups_from(statuses, self.replicas)))
        obs = Observed(nodes, groups, endpoints)
        self.last = obs
        return obs

    def _adopted(self, groups: list[pl.GroupInfo]) -> list[pl.GroupInfo]:
        """Count as caught up only learners this loop added or has seen for
        ADOPT_LEARNER_S (see there)."""
        now = time.monotonic()
        seen = {
            (g.id, n): self._learner_seen.get((g.id, n), now) for g in groups for n in g.learners
        }
        self._learner_seen = seen
        return [
            replace(
                g,
                caught_up=frozenset(
                    n
                    for n in g.caught_up
                    if (g.id, n) in self._ours or now - seen[(g.id, n)] >= ADOPT_LEARNER_S
                ),
            )
            for g in groups
        ]

    def _held(self, groups: list[pl.GroupInfo]) -> list[pl.GroupInfo]:
        """Each group with how long its leader and its membership have been as they are
        now, as this loop has seen them (the planner's hold-down)."""
        now = time.monotonic()
        out = []
        leaders, members = {}, {}
        for g in groups:
            lead = self._leader_seen.get(g.id)
            if lead is None or lead[0] != g.leader:
                lead = (g.leader, now)
            voters, learners = tuple(sorted(g.voters)), tuple(sorted(g.learners))
            mem = self._members_seen.get(g.id)
            if mem is None or mem[:2] != (voters, learners):
                mem = (voters, learners, now)
            leaders[g.id], members[g.id] = lead, mem
            out.append(replace(g, leader_for=now - lead[1], members_for=now - mem[2]))
        self._leader_seen, self._members_seen = leaders, members
        return out

    # -- acting ----------------------------------------------------------------------
    async def round(self) -> list[pl.Op]:
        obs = await self.observe()
        now = time.monotonic()
        if self._led_since is None:
            self._led_since = now
        ops = pl.plan(
            obs.groups,
            obs.nodes,
            down_after=self.down_after,
            moves=self.moves,
            rebalance=now - self._led_since >= REBALANCE_AFTER_S,
            # The meta group is found by its founding voters (MetaClient): repair it,
            # but never move it for balance.
            pinned=(META_GROUP,),
        )
        leaders = {g.id: g.leader for g in obs.groups}
        await asyncio.gather(*(self.execute(op, leaders[op.group], obs.endpoints) for op in ops))
        return ops

    async def execute(self, op: pl.Op, leader: int, endpoints: dict[int, str]) -> bool:
        if op.group == META_GROUP:
            return await self._execute_meta(op)
        stub = self._stub(endpoints[leader])
        member = admin_pb2.MemberRequest(group=op.group, node_id=op.node)
        kind = type(op).__name__
        log.event("placement_step", step=kind, group=op.group, node=op.node, reason=op.reason)
        try:
            if isinstance(op, pl.AddLearner):
                self._ours.add((op.group, op.node))
                await stub.AddLearner(member, timeout=STEP_TIMEOUT_S)
            elif isinstance(op, pl.Promote):
                await stub.PromoteLearner(member, timeout=STEP_TIMEOUT_S)
            elif isinstance(op, pl.Remove):
                await stub.RemoveMember(member, timeout=STEP_TIMEOUT_S)
            else:
                await stub.TransferLeadership(
                    admin_pb2.TransferLeadershipRequest(group=op.group, to=op.node),
                    timeout=STEP_TIMEOUT_S,
                )
        except grpc.aio.AioRpcError as e:
            log.event(
                "placement_step_failed",
                level=20,
                step=kind,
                group=op.group,
                node=op.node,
                error=f"{e.code().name}: {e.details()}",
            )
            return False
        return True

    async def _execute_meta(self, op: pl.Op) -> bool:
        """Steps of the meta group run here: this node leads it (and the admin RPCs
        read group 0 as "unset", i.e. group 1)."""
        kind = type(op).__name__
        log.event("placement_step", step=kind, group=op.group, node=op.node, reason=op.reason)
        try:
            if isinstance(op, pl.TransferLeader):
                self.driver.transfer_leadership(META_GROUP, op.node)
                return True
            if isinstance(op, pl.AddLearner):
                self._ours.add((op.group, op.node))
                cc = ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=op.node)
            elif isinstance(op, pl.Promote):
                cc = ConfChange(type=ConfChangeType.ADD_NODE, node_id=op.node)
            else:
                cc = ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=op.node)
            address = "" if isinstance(op, pl.Remove) else self.driver.endpoints.get(op.node, "")
            await self.driver.propose_conf_change(
                META_GROUP, with_address(cc, address), STEP_TIMEOUT_S
            )
        except (OpError, ConsensusError) as e:
            log.event(
                "placement_step_failed",
                level=20,
                step=kind,
                group=op.group,
                node=op.node,
                error=str(e),
            )
            return False
        return True

    # -- operator requests -----------------------------------------------------------
    async def move(self, shard: int, frm: int, to: int, timeout: float) -> pl.GroupInfo:
        """Move ``shard``'s replica from ``frm`` to ``to`` and wait until it is done.
        Raises InvalidOp (nothing changed) for bad input, DeadlineOp when it does not
        finish in time (the steps taken stay: the shard is valid, maybe with a learner
        or an extra voter that placement then settles)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        obs = await self.observe()
        g = next((x for x in obs.groups if x.id == shard), None)
        node = {n.id: n for n in obs.nodes}.get(to)
        why = ""
        ids = sorted(d.id for d in self.meta.local_map())
        if shard != META_GROUP and shard not in ids:
            why = f"shard {shard} does not exist (shards: {ids})"
        elif shard == META_GROUP:
            why = "the meta group is not moved by command (placement repairs it)"
        elif g is None:
            why = f"shard {shard} has no leader now"
        elif frm not in g.voters and frm not in g.learners:
            why = f"node {frm} holds no replica of shard {shard} (replicas {list(g.voters)})"
        elif node is None:
            why = f"node {to} is not a node of this cluster"
        elif to in g.voters or to in g.learners:
            why = f"node {to} already holds a replica of shard {shard}"
        elif not node.alive:
            why = f"node {to} is not alive ({node.liveness}, phi {node.phi:.1f})"
        elif node.draining:
            why = f"node {to} is being decommissioned"
        elif shard in self.moves and self.moves[shard] != (frm, to):
            why = (
                f"shard {shard} is already moving {self.moves[shard][0]} -> {self.moves[shard][1]}"
            )
        if why and self.moves.get(shard) != (frm, to):  # a retried call joins its move
            raise InvalidOp(f"cannot move: {why}", definite=True)
        self.moves[shard] = (frm, to)
        log.event("move_started", group=shard, from_node=frm, to_node=to)
        try:
            while loop.time() < deadline:
                if g is not None and to in g.voters and frm not in {*g.voters, *g.learners}:
                    return g
                await asyncio.sleep(min(self.period / 2, 0.5))
                last = self.last
                if last is not None:
                    g = next((x for x in last.groups if x.id == shard), None)
                    dest = {n.id: n for n in last.nodes}.get(to)
                    # A destination judged down mid-move never catches up: say so now
                    # rather than at the deadline (placement removes its learner).
                    if dest is not None and dest.liveness == "dead":
                        raise InvalidOp(
                            f"cannot move: node {to} is not alive ({dest.liveness}, phi "
                            f"{dest.phi:.1f}); the move stopped",
                            definite=False,
                        )
            raise DeadlineOp(f"move of shard {shard} did not finish in time", definite=False)
        finally:
            if self.moves.get(shard) == (frm, to):
                del self.moves[shard]

    async def decommission(self, node: int) -> tuple[int, list[str]]:
        """Start (or keep) draining ``node``: (replicas it still holds, reasons it may
        not go; with reasons nothing changes)."""
        if node not in self.driver.endpoints:
            return 0, [f"node {node} is not a node of this cluster"]
        obs = self.last if self.last is not None else await self.observe()
        held = sum(1 for g in obs.groups if node in g.voters or node in g.learners)
        if node not in self.draining:
            why = pl.decommission_blockers(obs.groups, obs.nodes, node)
            if why:
                return held, why
            self.draining.add(node)
            log.event("decommission_started", node=node, replicas=held)
        return held, []


def groups_from(statuses: dict[int, Any], replicas: int) -> list[pl.GroupInfo]:
    """Each group as its leader reports it (groups with no reachable leader: left out),
    with the learners that have caught up."""
    applied: dict[tuple[int, int], tuple[int, bool]] = {}
    leading: dict[int, tuple[int, Any]] = {}
    merging: set[int] = set()
    for n, st in statuses.items():
        for g in st.groups:
            applied[(g.group, n)] = (g.applied, g.group == META_GROUP or g.HasField("shard"))
            if g.merging_with:
                # Any replica's word counts: the coordinator may not lead the source yet.
                merging |= {g.group, g.merging_with}
            if g.role == "leader":
                prev = leading.get(g.group)
                if prev is None or g.term > prev[1].term:
                    leading[g.group] = (n, g)
    out = []
    for gid, (leader, g) in sorted(leading.items()):
        caught = set()
        match = {p.id: p.match for p in g.progress}
        for ln in g.learners:
            got, has_shard = applied.get((gid, ln), (0, False))
            if (ln in match and match[ln] >= g.commit) or (
                not match and has_shard and got + CATCHUP_SLACK >= g.commit
            ):
                caught.add(ln)
        out.append(
            pl.GroupInfo(
                gid,
                tuple(g.voters),
                tuple(g.learners),
                leader,
                frozenset(caught),
                replicas,
                merging=gid in merging,
            )
        )
    return out


def counts(groups: Sequence[pl.GroupInfo]) -> tuple[dict[int, int], dict[int, int]]:
    """(replicas, leaders) per node."""
    reps: dict[int, int] = {}
    leads: dict[int, int] = {}
    for g in groups:
        for n in {*g.voters, *g.learners}:
            reps[n] = reps.get(n, 0) + 1
        if g.leader:
            leads[g.leader] = leads.get(g.leader, 0) + 1
    return reps, leads
