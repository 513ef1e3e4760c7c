"""History on the client API: gets at a past revision and Compact (the Watch stream is
watch.py).

Rule: a read at a revision is served from one LMDB snapshot of the replica, after the
same read barrier as a get at the latest revision; a revision outside the replica's
history is OUT_OF_RANGE naming the oldest available revision (compacted) or the
current one (future), never a wrong value. Compact goes through the shard's log, so
every replica drops the same history.
"""

from __future__ import annotations

import asyncio

from kvstore._pb import kv_pb2
from kvstore.node.driver import NodeDriver
from kvstore.node.errors import OutOfRangeOp, StaleRouteOp
from kvstore.node.routing import UNSHARDED_GROUP, LocalRouter
from kvstore.server import convert
from kvstore.shard import commands as shard_cmds
from kvstore.statemachine import KeyValue
from kvstore.storage import NodeStorage
from kvstore.storage.history import Compacted, FutureRevision, HistoryReader


def out_of_range(e: Compacted | FutureRevision) -> OutOfRangeOp:
    if isinstance(e, Compacted):
        return OutOfRangeOp(str(e), compact_revision=e.compacted)
    return OutOfRangeOp(str(e))


def get_at_revision(
    storage: NodeStorage, group: int, key: bytes, revision: int
) -> tuple[KeyValue | None, int, int]:
    """(the key as of ``revision``, applied index, applied time); raises OutOfRangeOp."""
    try:
        kv, _, applied, time = HistoryReader(storage, group).get_at(key, revision)
    except (Compacted, FutureRevision) as e:
        raise out_of_range(e) from None
    return kv, applied, time


def shard_group(router: LocalRouter, op: kv_pb2.Op) -> int:
    """The group a whole-shard op (compact, watch) names: op.shard on a sharded node."""
    if not router.sharded:
        return UNSHARDED_GROUP
    d = router.get(op.shard)
    if d is None or (op.shard_version and op.shard_version != d.epoch.version):
        raise StaleRouteOp(f"stale route: shard {op.shard} is not here at that version")
    return d.id


async def compact(driver: NodeDriver, group: int, revision: int, timeout: float) -> kv_pb2.OpResult:
    """Propose Compact(revision) in ``group``'s log; the answer carries the compacted
    revision once it applied."""
    data = shard_cmds.encode(shard_cmds.Compact(revision))
    result = await asyncio.wait_for(driver.propose_admin(group, data, timeout), timeout)
    out = kv_pb2.OpResult()
    out.compact.compact_revision = result
    out.compact.header.CopyFrom(convert.header(group, 0, 0, 0, 0))
    return out
