"""The merge coordinator: runs one online merge of a shard with its right neighbour on
the left shard's leader (docs/sharding.md, "Merge"; the rules: kvstore.shard.merging).

Steps: (1) checks (the right neighbour has a replica here, so both shards sit on this
node; kvstore.shard.merging.check_merge; no split, merge or membership change of either
in flight); (2) pull the right shard's leadership to this node; (3) PrepareMerge in the
right (source) log: from its index L the source is frozen; (4) wait until EVERY source
replica has applied L with the prepared epoch (a quorum is not enough: TiKV #6460);
(5) CommitMerge in the left (target) log; (6) report the result to the meta group.

Rules this module keeps:
- A RollbackMerge is proposed only when no CommitMerge can ever apply: after a FenceMerge
  in the target's log raised its version (a CommitMerge carries the epoch the prepare
  recorded) and the target does not cover the source (no CommitMerge applied before the
  fence). So two coordinators of one merge (a retry on a new leader, the watchdog) can
  never commit and roll back the same merge. A step whose outcome is unknown leaves the
  source frozen; running the merge again resumes it (it finishes, or gives up as above),
  and so does the node leading a source frozen for RESUME_AFTER_S with no merge running.
  When the target itself was merged away meanwhile (a chain: it was frozen as another
  merge's source), the map shows it (kvstore.shard.merging.target_merged_away) and the
  source is rolled back without a fence (it stayed frozen for ever before).
- Bad input and merges that cannot start change nothing and name why.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import grpc
import grpc.aio

from kvstore._pb import admin_pb2
from kvstore.consensus.types import Role
from kvstore.node import log
from kvstore.node.errors import AbortedOp, InvalidOp, OpError, UnavailableOp
from kvstore.shard import commands as cmds
from kvstore.shard.descriptor import Descriptor
from kvstore.shard.merging import check_merge, target_merged_away
from kvstore.shard.split import SplitError

if TYPE_CHECKING:
    from kvstore.node.driver import NodeDriver
    from kvstore.node.meta import MetaClient
    from kvstore.node.reporter import Reporter
    from kvstore.node.routing import LocalRouter

WATCH_S = 2.0
RESUME_AFTER_S = 10.0
"""A merge source frozen this long while its leader runs no merge of it is resumed by
that leader (its coordinator died or gave up with an unknown outcome)."""
RESUME_TIMEOUT_S = 30.0
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
        *,
        split_limits: tuple[int, int] | None = None,
    ) -> None:
        self.driver = driver
        self.split_limits = split_limits
        """(--split-size, --split-key-count) of the automatic split (None: off)."""
        self.router = router
        self.meta = meta
        self.reporter = reporter
        self._busy: dict[int, int] = {}
        """Shard -> the other shard of the merge this node runs for it."""
        self._seen: dict[tuple[int, int], float] = {}
        """(frozen source led here, its merge index) -> when first seen frozen."""
        self._task: asyncio.Task[None] | None = None

    async def merge(self, left_id: int, source: int, timeout: float) -> tuple[Descriptor, int]:
        """Merge ``left_id`` with its right neighbour (which must be ``source`` when
        that is not 0); returns the merged descriptor and the absorbed shard's id."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        left, right = self._pick(left_id, source)
        busy = {left.id, right.id} & self._busy.keys()
        if busy:
            raise InvalidOp(
                f"a merge of shard {min(busy)} is already under way on this node", definite=True
            )
        self._busy.update({left.id: right.id, right.id: left.id})
        try:
            return await self._run(left, right, deadline)
        finally:
            self._forget(left.id, right.id)

    def merging_with(self, shard: int) -> int:
        """The other shard of a merge of ``shard`` under way here (0: none): the other
        shard of a merge this node runs, a frozen source's target, or the target's
        frozen source. Placement and the automatic split leave both alone meanwhile."""
        if shard in self._busy:
            return self._busy[shard]
        for gid in list(self.driver.groups):
            d = self.driver.storage.group(gid).view.shard
            if d is not None and d.merging_into and shard in (gid, d.merging_into):
                return d.merging_into if gid == shard else gid
        return 0

    def _forget(self, *shards: int) -> None:
        for s in shards:
            self._busy.pop(s, None)

    async def _check_size(self, left: Descriptor, right: Descriptor) -> None:
        """Refuse a merge whose result the automatic split would split again at once
        (split and merge must not undo each other)."""
        limits = self.split_limits
        if limits is None or not (limits[0] > 0 or limits[1] > 0):
            return
        max_bytes, max_keys = limits
        keys = size = 0
        for d in (left, right):
            reader = self.driver.storage.kv(d.id)
            k, b = await asyncio.to_thread(reader.measure, max_keys, max_bytes)
            keys, size = keys + k, size + b
        over = (0 < max_keys < keys and f"{keys} keys (--split-key-count {max_keys})") or (
            0 < max_bytes < size and f"{size} bytes (--split-size {max_bytes})"
        )
        if over:
            raise InvalidOp(
                f"shards {left.id} and {right.id} together hold more than {over}: the "
                "automatic split would split the merged shard again at once; nothing changed",
                definite=True,
            )

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
            await self._check_size(left, right)
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
            done = await self._give_up(src, deadline)
            if done is not None:
                return done, right.id  # a CommitMerge of another coordinator applied
            raise AbortedOp(
                f"merge of shard {right.id} into shard {left.id} rolled back: the replicas on "
                f"nodes {lagging} did not apply the PrepareMerge (index {src.merge_index}) "
                "in time (a merge needs every replica of both shards up); nothing changed"
            )
        try:
            version = await self.driver.propose_admin(
                left.id, cmds.encode(cmds.CommitMerge(src)), max(deadline - loop.time(), 0.1)
            )
        except OpError as e:
            raise UnavailableOp(
                f"merge of shard {right.id} into shard {left.id}: outcome unknown "
                f"({e.message}); shard {right.id} stays frozen until the merge is resumed "
                f"(`kvstore shard merge {left.id}`, or by the node leading it after "
                f"{RESUME_AFTER_S:.0f} s)",
                definite=False,
            ) from e
        merged = self.router.get(left.id) or self.driver.storage.group(left.id).view.shard
        if version == 0:
            done = await self._give_up(src, deadline)
            if done is not None:
                return done, right.id  # an earlier CommitMerge of this prepare applied
            raise AbortedOp(
                f"shard {left.id} changed while merging (now "
                f"{merged.describe() if merged else 'gone'}); the merge was rolled back; retry"
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

    async def _give_up(self, src: Descriptor, deadline: float) -> Descriptor | None:
        """End the merge of ``src`` without committing it: fence the target (so no
        CommitMerge can apply after that entry), then, unless one applied before it (the
        target then covers the source: returned), roll the source back. Raises OpError
        (the source stays frozen, to be resumed) when a step's outcome is unknown."""
        loop = asyncio.get_running_loop()
        target = src.merging_into
        until = max(deadline, loop.time() + 3.0)
        try:
            await self._lead(target, until)
            await self.driver.propose_admin(
                target, cmds.encode(cmds.FenceMerge(src.id)), max(until - loop.time(), 1.0)
            )
            t = self.router.get(target) or self.driver.storage.group(target).view.shard
            if t is not None and t.covers(src.start, src.end):
                return t
            await self._rollback(src, until)
        except OpError as e:
            log.event("merge_rollback_failed", level=30, group=src.id, error=e.message)
            raise UnavailableOp(
                f"merge of shard {src.id} into shard {target} could not be rolled back "
                f"({e.message}); it stays frozen until resumed",
                definite=False,
            ) from e
        log.event("merge_rolled_back", group=src.id, target=target)
        return None

    async def _rollback(self, src: Descriptor, until: float) -> None:
        """Propose the RollbackMerge of ``src`` (only once no CommitMerge can apply)."""
        loop = asyncio.get_running_loop()
        await self._lead(src.id, until)
        await self.driver.propose_admin(
            src.id, cmds.encode(cmds.RollbackMerge(src.epoch)), max(until - loop.time(), 1.0)
        )

    # -- resuming merges whose coordinator went away --------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="merge-watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                await self.resume_stale(asyncio.get_running_loop().time())
            except Exception as e:  # never let the watchdog end: the next period retries
                log.event("merge_resume_failed", level=30, error=repr(e))

    async def resume_stale(self, now: float) -> list[int]:
        """Resume every merge source this node leads that has been frozen for
        RESUME_AFTER_S with no merge of it running here; returns those it resumed."""
        frozen = {}
        for gid, g in list(self.driver.groups.items()):
            d = self.driver.storage.group(gid).view.shard
            if d is not None and d.merging_into and g.role == Role.LEADER:
                frozen[(gid, d.merge_index)] = d
        self._seen = {k: self._seen.get(k, now) for k in frozen}
        out = []
        for key, d in frozen.items():
            if now - self._seen[key] < RESUME_AFTER_S or {d.id, d.merging_into} & self._busy.keys():
                continue
            self._seen.pop(key)
            out.append(d.id)
            log.event("merge_resuming", group=d.id, target=d.merging_into)
            try:
                await self._resume(d)
            except OpError as e:
                log.event("merge_resume_failed", level=20, group=d.id, error=e.message)
        return out

    async def _resume(self, src: Descriptor) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESUME_TIMEOUT_S
        target = self.router.get(src.merging_into)
        if target is None:
            # The target was merged away while this merge was pending (its replica here
            # went with it): no fence is possible nor needed once the map shows it.
            if not target_merged_away(src, await self.meta.shard_map()):
                raise UnavailableOp(f"no replica of shard {src.merging_into} here", definite=True)
            self._busy[src.id] = src.merging_into
            try:
                await self._rollback(src, deadline)
            finally:
                self._forget(src.id)
            log.event("merge_rolled_back", group=src.id, target=src.merging_into)
            return
        if target.epoch != src.merge_target_epoch or target.merging_into:
            # No CommitMerge of this prepare can apply any more.
            self._busy.update({src.id: target.id, target.id: src.id})
            try:
                await self._give_up(src, deadline)
            finally:
                self._forget(src.id, target.id)
            return
        await self._lead(target.id, deadline)
        await self.merge(target.id, src.id, deadline - loop.time())
