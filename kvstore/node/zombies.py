"""Zombie replicas: a node destroys its replicas that the shard map says were removed
(docs/sharding.md, "Zombie replicas"), e.g. after it comes back from being down while
placement replaced them.

Rules this module keeps:
- A local replica is a zombie only if the map (read linearizably from the meta group)
  holds a descriptor of the same id that does not list this node and that is at least
  as new as the local one, or the local descriptor itself no longer lists this node
  (it applied its own removal), or it is a merge source frozen into a target that the
  map shows merged (covering it, newer) while no local replica of that target remains
  (the node slept through the CommitMerge and lost its target replica to a repair). A
  map older than the local replica never condemns it (the node may just have been added
  back), and a replica with no descriptor yet (being
  built from a snapshot) or of the meta group is never touched.
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
    by_id = {d.id: d for d in shard_map}
    out = []
    for gid, d in sorted(local.items()):
        m = by_id.get(gid)
        if gid == META_GROUP or d is None:
            continue
        if m is None:
            if not _absorbed(d, by_id, local):
                continue
        elif me in m.replicas:
            continue
        if m is not None and _epoch(m) < _epoch(d) and me in d.replicas:
            continue  # the map lags behind this replica
        if any(o is not None and other != gid and o.overlaps(d) for other, o in local.items()):
            continue
        out.append(gid)
    return out


def _absorbed(
    d: Descriptor, by_id: Mapping[int, Descriptor], local: Mapping[int, Descriptor | None]
) -> bool:
    """Is ``d`` a frozen merge source whose merge committed (the map's target covers it,
    newer) while this node holds no replica of the target, which could still need it
    (its CommitMerge destroys the source itself, a snapshot of it absorbs it)?"""
    t = by_id.get(d.merging_into) if d.merging_into else None
    return (
        t is not None
        and d.merging_into not in local
        and t.covers(d.start, d.end)
        and t.epoch.version > d.epoch.version
    )


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
