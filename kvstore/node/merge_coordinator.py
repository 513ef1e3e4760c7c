"""The merge coordinator: runs one online merge of a shard with its right neighbour on
the left shard's leader (docs/sharding.md, "Merge"; the rules: kvstore.shard.merging).

Steps: (1) checks (the right neighbour has a replica here, so both shards sit on this
node; kvstore.shard.merging.check_merge; no split, merge or membership change of either
in flight); (2) pull the right shard's leadership to this node; (3) PrepareMerge in the
right (source) log: from its index L the source is frozen; (4) wait until EVERY source
replica has applied L with the prepared epoch (a quorum is not enough: TiKV #6460);
(5) CommitMerge in the left (target) log; (6) report the result to the meta group.

Rules this module keeps:
- A RollbackMerge is proposed only when no CommitMerge can ever apply: before any
  CommitMerge was proposed, or after one was refused (the target's epoch moved on, so
  every later one is refused too). A CommitMerge whose outcome is unknown (timeout, lost
  leadership) is never rolled back: the source stays frozen and running the merge again
  resumes it (it finishes, or rolls back if it cannot).
- Bad input and merges that cannot start change nothing and name why.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import grpc.aio

from kvstore._pb import admin_pb2
from kvstore.consensus.types import Role
from kvstore.node import log
from kvstore.node.errors import InvalidOp, OpError, UnavailableOp
from kvstore.shard import commands as cmds
from kvstore.shard.descriptor import Descriptor
from kvstore.shard.merging import check_merge
from kvstore.shard.split import SplitError

if TYPE_CHECKING:
    from kvstore.node.driver import NodeDriver
    from kvstore.node.meta import MetaClient
    from kvstore.node.reporter import Reporter
    from kvstore.node.routing import LocalRouter

APPLY_WAIT_S = 10.0
"""How long every source replica gets to apply the PrepareMerge before the merge rolls
back (a replica down or cut off blocks a merge: it must not miss the source's data)."""
LEAD_WAIT_S = 5.0
POLL_S = 0.05


class MergeCoordinator:
    def __init__(
        self,
        driver: NodeDriver,
        router: LocalRouter,
        meta: MetaClient,
        reporter: Reporter | None,
    ) -> None:
        self.driver = driver
        self.router = router
        self.meta = meta
        self.reporter = reporter
        self._busy: set[int] = set()
        """Shards with a merge run by this node."""

    async def merge(self, left_id: int, source: int, timeout: float) -> tuple[Descriptor, int]:
        """Merge ``left_id`` with its right neighbour (which must be ``source`` when
        that is not 0); returns the merged descriptor and the absorbed shard's id."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        left, right = self._pick(left_id, source)
        busy = {left.id, right.id} & self._busy
        if busy:
            raise InvalidOp(
                f"a merge of shard {min(busy)} is already under way on this node", definite=True
            )
        self._busy |= {left.id, right.id}
        try:
            return await self._run(left, right, deadline)
        finally:
            self._busy -= {left.id, right.id}

    def _pick(self, left_id: int, source: int) -> tuple[Descriptor, Descriptor]:
        """The two shards, from this node's replicas (checked as far as they can be here)."""
        g = self.driver.groups.get(left_id)
        left = self.router.get(left_id)
        if g is None or left is None:
            raise UnavailableOp(f"shard {left_id} has no replica here", definite=True)
        if g.role != Role.LEADER:
            raise self.driver.not_leader(g)
        if not left.end:
            raise InvalidOp(
                f"shard {left_id} is the last shard: it has no right neighbour to merge with",
                definite=True,
            )
        right = next((d for d in self.router.descriptors() if d.start == left.end), None)
        if right is None or right.id not in self.driver.groups:
            raise InvalidOp(
                f"the right neighbour of shard {left_id} (the shard starting at "
                f"{left.end!r}) has no replica on node {self.driver.config.node_id}, which "
                f"holds shard {left_id}: the two shards are not on the same nodes; move one "
                "shard's replicas first (kvstore shard move)",
                definite=True,
            )
        if source and right.id != source:
            raise InvalidOp(
                f"shard {left_id}'s right neighbour is shard {right.id}, not shard {source} "
                f"(now {left.describe()}; did the merge already happen?)",
                definite=True,
            )
        return left, right

    def _check_idle(self, shard: int) -> None:
        g = self.driver.groups[shard]
        if g.admin or g.admin_inflight:
            raise InvalidOp(
                f"a split or merge of shard {shard} is in flight; retry when it is done",
                definite=True,
            )
        if g.confs or g.conf_inflight:
            raise InvalidOp(
                f"a membership change (move) of shard {shard} is in flight; retry when it is done",
                definite=True,
            )

    async def _run(
        self, left: Descriptor, right: Descriptor, deadline: float
    ) -> tuple[Descriptor, int]:
        loop = asyncio.get_running_loop()
        if left.merging_into:
            raise InvalidOp(
                f"shard {left.id} is itself merging into shard {left.merging_into}", definite=True
            )
        resume = right.merging_into == left.id
        if right.merging_into and not resume:
            raise InvalidOp(
                f"shard {right.id} is already merging into shard {right.merging_into}",
                definite=True,
            )
        if not resume:
            try:
                check_merge(left, right)
            except SplitError as e:
                raise InvalidOp(str(e), definite=True) from e
            self._check_idle(left.id)
            self._check_idle(right.id)
        await self._lead(right.id, deadline)
        if not resume:
            prep = cmds.PrepareMerge(left.id, right.epoch, left.epoch)
            index = await self.driver.propose_admin(
                right.id, cmds.encode(prep), max(deadline - loop.time(), 0.1)
            )
            if index == 0:
                raise UnavailableOp(
                    f"shard {right.id} changed before the merge was prepared; retry",
                    definite=True,
                )
            log.event("merge_prepared", group=right.id, target=left.id, index=index)
        src = self.driver.storage.group(right.id).view.shard
        assert src is not None and src.merging_into == left.id
        wait_until = min(deadline - 1.0, loop.time() + APPLY_WAIT_S)
        lagging = await self._wait_applied(src, wait_until)
        if lagging:
            await self._rollback(src, deadline)
            raise UnavailableOp(
                f"merge of shard {right.id} into shard {left.id} rolled back: the replicas on "
                f"nodes {lagging} did not apply the PrepareMerge (index {src.merge_index}) "
                "in time (a merge needs every replica of both shards up); retry",
                definite=True,
            )
        try:
            version = await self.driver.propose_admin(
                left.id, cmds.encode(cmds.CommitMerge(src)), max(deadline - loop.time(), 0.1)
            )
        except OpError as e:
            raise UnavailableOp(
                f"merge of shard {right.id} into shard {left.id}: outcome unknown "
                f"({e.message}); shard {right.id} stays frozen until `kvstore shard merge "
                f"{left.id}` runs again, which finishes it or rolls it back",
                definite=False,
            ) from e
        merged = self.router.get(left.id) or self.driver.storage.group(left.id).view.shard
        if version == 0:
            if merged is not None and merged.covers(src.start, src.end):
                return merged, right.id  # an earlier CommitMerge of this prepare applied
            await self._rollback(src, deadline)
            raise UnavailableOp(
                f"shard {left.id} changed while merging (now "
                f"{merged.describe() if merged else 'gone'}); the merge was rolled back; retry",
                definite=True,
            )
        assert merged is not None
        log.event("merge_committed", group=left.id, source=right.id, version=version)
        if self.reporter is not None:
            try:
                await self.reporter.report_now(max(deadline - loop.time(), 0.1))
            except OpError:
                self.reporter.poke()  # the merge stands; the map catches up in the background
        return merged, right.id

    async def _lead(self, shard: int, deadline: float) -> None:
        """Bring ``shard``'s leadership to this node (it holds a voter of it)."""
        loop = asyncio.get_running_loop()
        me = self.driver.config.node_id
        until = min(deadline, loop.time() + LEAD_WAIT_S)
        asked = 0
        while loop.time() < until:
            g = self.driver.groups.get(shard)
            if g is None:
                raise UnavailableOp(f"shard {shard} left this node", definite=True)
            if g.role == Role.LEADER:
                return
            if g.leader and g.leader != asked:
                asked = g.leader
                ep = self.driver.endpoints.get(g.leader, "")
                req = admin_pb2.TransferLeadershipRequest(to=me, group=shard)
                try:
                    await self.meta.admin_stub(ep).TransferLeadership(
                        req, timeout=max(min(until - loop.time(), 3.0), 0.1)
                    )
                except grpc.aio.AioRpcError:
                    asked = 0  # ask again (perhaps another leader by then)
            await asyncio.sleep(POLL_S)
        raise UnavailableOp(
            f"could not bring shard {shard}'s leadership to node {me} in time; retry",
            definite=True,
        )

    async def _wait_applied(self, src: Descriptor, until: float) -> list[int]:
        """Wait until every replica of ``src`` has applied its PrepareMerge with the same
        epoch; returns the nodes that have not by ``until`` (empty: all have)."""
        loop = asyncio.get_running_loop()
        pending = set(src.replicas)
        while True:
            for node in sorted(pending):
                if await self._applied(node, src):
                    pending.discard(node)
            g = self.driver.groups.get(src.id)
            if g is not None and (g.confs or g.conf_inflight):
                return sorted(pending | {self.driver.config.node_id})
            if not pending or loop.time() >= until:
                return sorted(pending)
            await asyncio.sleep(POLL_S)

    async def _applied(self, node: int, src: Descriptor) -> bool:
        if node == self.driver.config.node_id:
            g = self.driver.groups.get(src.id)
            d = self.driver.storage.group(src.id).view.shard
            return g is not None and g.applied >= src.merge_index and d == src
        ep = self.driver.endpoints.get(node, "")
        if not ep:
            return False
        try:
            st = await self.meta.admin_stub(ep).Status(admin_pb2.StatusRequest(), timeout=1.0)
        except grpc.aio.AioRpcError:
            return False
        for gs in st.groups:
            if gs.group == src.id:
                return bool(
                    gs.applied >= src.merge_index
                    and gs.shard.version == src.epoch.version
                    and gs.shard.conf_ver == src.epoch.conf_ver
                )
        return False

    async def _rollback(self, src: Descriptor, deadline: float) -> None:
        """Unfreeze the source (safe: no CommitMerge of this prepare can apply)."""
        loop = asyncio.get_running_loop()
        try:
            await self._lead(src.id, max(deadline, loop.time() + 1.0))
            await self.driver.propose_admin(
                src.id,
                cmds.encode(cmds.RollbackMerge(src.epoch)),
                max(deadline - loop.time(), 2.0),
            )
            log.event("merge_rolled_back", group=src.id, target=src.merging_into)
        except OpError as e:
            log.event("merge_rollback_failed", level=30, group=src.id, error=e.message)
