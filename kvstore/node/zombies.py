"""Zombie replicas: a node destroys its replicas that the shard map says were removed
(docs/sharding.md, "Zombie replicas"), e.g. after it comes back from being down while
placement replaced them.

Rules this module keeps:
- A local replica is a zombie only if the map (read linearizably from the meta group)
  holds a descriptor of the same id that does not list this node and that is at least
  as new as the local one, or the local descriptor itself no longer lists this node
  (it applied its own removal), or it is a merge source frozen into a target that the
  map shows merged (covering it, newer) while no local replica of that target remains
  (the node slept through the CommitMerge and lost its target replica to a repair, or
  the local target caught up by a snapshot of a later split of the merged shard that does
  not cover the source: FINDINGS F9, which left the source there for ever, refusing every
  snapshot of the shards now holding its range). A merged source is recognised by the
  map: its id is gone and newer descriptors cover its whole range. A map older than the
  local replica never condemns it (the node may just have been added back), and a
  replica with no descriptor yet (being built from a snapshot) or of the meta group is
  never touched.
- A frozen merge source is never destroyed while its local target replica may still
  apply the CommitMerge (the target's epoch has not moved past the one the prepare
  recorded): that CommitMerge takes the source's keys as they are here, and destroying
  the source deletes them (a membership change of the source after its PrepareMerge,
  proposed by a leader that had not applied it yet, could make it look removed). Nor
  while a lagging ancestor of the target may still create it here: a local replica
  ending where the source starts, older than the prepared target (its log splits the
  target off, whose log then applies the CommitMerge; sharded simulation, paxos seed
  30219: the destroyed source's keys were missing from the merged shard).
- Nothing is destroyed while another local replica overlaps its range: dropping a group
  deletes the user keys of its range, which that replica may own now.
- The destroy runs in the driver's loop, between two persists: the group leaves
  ``driver.groups`` (its pending requests fail as unavailable) and its state, with its
  range's keys, goes in one storage transaction. Messages that arrive later for it find
  no group; only a leader that counts this node as a member again (a snapshot) can
  create it anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from kvstore.node import log
from kvstore.node.errors import OpError, UnavailableOp
from kvstore.shard.descriptor import META_GROUP, Descriptor

if TYPE_CHECKING:
    from kvstore.node.driver import NodeDriver
    from kvstore.node.meta import MetaClient

PERIOD_S = 5.0


def _epoch(d: Descriptor) -> tuple[int, int]:
    return (d.epoch.version, d.epoch.conf_ver)


def zombies(
    local: Mapping[int, Descriptor | None], shard_map: Iterable[Descriptor], me: int
) -> list[int]:
    """The local groups to destroy (see the module rules)."""
    descs = list(shard_map)
    by_id = {d.id: d for d in descs}
    out = []
    for gid, d in sorted(local.items()):
        m = by_id.get(gid)
        if gid == META_GROUP or d is None:
            continue
        if d.merging_into and _target_may_commit(d, local):
            continue
        if m is None:
            if not _absorbed(d, descs):
                continue
        elif me in m.replicas:
            continue
        if m is not None and _epoch(m) < _epoch(d) and me in d.replicas:
            continue  # the map lags behind this replica
        if any(o is not None and other != gid and o.overlaps(d) for other, o in local.items()):
            continue
        out.append(gid)
    return out


def _target_may_commit(d: Descriptor, local: Mapping[int, Descriptor | None]) -> bool:
    """Is ``d`` a frozen merge source whose local target replica may still apply its
    CommitMerge (it applies only at the epoch the prepare recorded; epochs only rise),
    or may still come to exist here and apply it: a lagging local replica that ends
    where the source starts with a version not past the prepared target's is the target's
    ancestor (the shard owning the keys just left of the source before the merge), and
    its log will split the target off, whose log then applies the CommitMerge."""
    want = d.merge_target_epoch
    for gid, t in local.items():
        if gid == d.id:
            continue
        if t is None:
            if gid == d.merging_into:
                return True  # being built from a snapshot: cannot tell yet
            continue
        if gid == d.merging_into:
            if t.epoch.version <= want.version and t.epoch.conf_ver <= want.conf_ver:
                return True
        elif t.end == d.start and t.epoch.version < want.version:
            return True
    return False


def _absorbed(d: Descriptor, shard_map: Iterable[Descriptor]) -> bool:
    """Is ``d`` (absent from the map) a frozen merge source whose merge committed: the
    map's descriptors overlapping its range are all newer and cover all of it? Only a
    CommitMerge gives a frozen source's range to another group; a split not yet reported
    leaves the older parent covering it, which does not count."""
    if not d.merging_into:
        return False
    over = sorted((m for m in shard_map if m.overlaps(d)), key=lambda m: m.start)
    if not over or any(m.epoch.version <= d.epoch.version for m in over):
        return False
    if over[0].start > d.start:
        return False
    for a, b in itertools.pairwise(over):
        if a.end != b.start:
            return False
    last = over[-1].end
    return not last or (bool(d.end) and last >= d.end)


def destroy_pending(driver: NodeDriver, groups: set[int]) -> None:
    """Destroy ``groups`` now (called by the driver between persists)."""
    err = UnavailableOp("the replica was removed from this node", definite=True)
    dropped = []
    for gid in sorted(groups):
        g = driver.groups.pop(gid, None)
        if g is None:
            continue
        g.fail_all(err)
        driver.metrics.forget_shard(gid)
        dropped.append(gid)
    groups.clear()
    if not dropped:
        return
    with driver.storage.write() as w:
        for gid in dropped:
            w.drop_group(gid)
    log.event("replicas_destroyed", groups=dropped)
    driver.on_shards_changed()


class ZombieReaper:
    def __init__(self, driver: NodeDriver, meta: MetaClient, period: float = PERIOD_S) -> None:
        self.driver = driver
        self.meta = meta
        self.period = period
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="zombie-reaper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def reap(self) -> list[int]:
        shard_map = await self.meta.shard_map()
        local = {gid: self.driver.storage.group(gid).view.shard for gid in list(self.driver.groups)}
        victims = zombies(local, shard_map, self.driver.config.node_id)
        for gid in victims:
            log.event("zombie_replica", group=gid, local=str(local[gid]))
            self.driver.destroy_replica(gid)
        return victims

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.reap()
            except OpError as e:
                log.event("zombie_check_failed", level=20, error=e.message)
            except Exception as e:  # never let the check end: the next period retries
                log.event("zombie_check_failed", level=30, error=repr(e))
