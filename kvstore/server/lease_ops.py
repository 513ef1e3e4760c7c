"""The lease ops of the KV service: grant, keep-alive and revoke go through the group's
log; time-to-live and list are answered by the group's leader from its timers
(node/lease_expiry.py) after a ReadIndex round, so a deposed leader does not answer.

Rule: as kv.py, every op is answered exactly once, and bad input is INVALID_ARGUMENT
naming the limit before anything is proposed.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from kvstore._pb import kv_pb2
from kvstore.node.errors import InvalidOp, StaleRouteOp
from kvstore.node.lease_expiry import LeaseExpiry
from kvstore.server.batch import Sink
from kvstore.server.convert import check_result, check_session
from kvstore.statemachine import (
    ApplyError,
    ApplyResult,
    LeaseCommand,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
)
from kvstore.statemachine.leases import MAX_LEASE_ID, check_ttl

if TYPE_CHECKING:
    from kvstore.server.kv import KVService

MAX_LISTED_KEYS = 10_000
"""Keys a time-to-live answer lists at most."""


class LeaseOps:
    def __init__(self, svc: KVService, expiry: LeaseExpiry) -> None:
        self.svc = svc
        self.expiry = expiry

    def group(self, op: kv_pb2.Op) -> int:
        """The group a lease op names: on a sharded node one it hosts (Op.shard)."""
        router = self.svc.router
        if not router.sharded:
            return router.for_key(b"", 0, 0)
        if op.shard and router.get(op.shard) is not None:
            return op.shard
        why = f"shard {op.shard} has no replica here" if op.shard else "a lease op needs Op.shard"
        raise StaleRouteOp(f"stale route: {why}", tuple(router.descriptors()))

    def dispatch(self, op: kv_pb2.Op, kind: str, timeout: float, sink: Sink) -> None:
        group = self.group(op)
        if kind == "lease_grant":
            g = op.lease_grant
            check_session(g.client_id, g.incarnation)
            why = check_ttl(g.ttl_ms)
            if why is not None:
                raise InvalidOp(why, definite=True)
            if g.id > MAX_LEASE_ID:
                raise InvalidOp(f"lease id must be below 2**63, got {g.id}", definite=True)
            lease = g.id or 1 + secrets.randbelow(MAX_LEASE_ID)
            cmd: LeaseCommand = LeaseGrant(lease, g.ttl_ms, g.client_id, g.seq, g.incarnation)
            self._write(op.id, kind, group, cmd, timeout, sink)
        elif kind == "lease_keep_alive":
            self._write(op.id, kind, group, LeaseKeepAlive(op.lease_keep_alive.id), timeout, sink)
        elif kind == "lease_revoke":
            r = op.lease_revoke
            check_session(r.client_id, r.incarnation)
            cmd = LeaseRevoke(r.id, r.client_id, r.seq, r.incarnation)
            self._write(op.id, kind, group, cmd, timeout, sink)
        else:
            self._status(op, kind, group, timeout, sink)

    def _write(
        self, op_id: int, kind: str, group: int, cmd: LeaseCommand, timeout: float, sink: Sink
    ) -> None:
        svc = self.svc

        def build(res: ApplyResult) -> kv_pb2.OpResult:
            if not (isinstance(cmd, LeaseRevoke) and res.error == ApplyError.LEASE_NOT_FOUND):
                check_result(res)  # revoking a lease that is gone: revoked = False
            result = kv_pb2.OpResult(id=op_id)
            hdr = svc._header(group, res.index, res.time or -1)
            if isinstance(cmd, LeaseGrant):
                result.lease_grant.header.CopyFrom(hdr)
                result.lease_grant.id = cmd.lease
                result.lease_grant.ttl_ms = cmd.ttl_ms
            elif isinstance(cmd, LeaseKeepAlive):
                result.lease_keep_alive.header.CopyFrom(hdr)
                result.lease_keep_alive.id = cmd.lease
                result.lease_keep_alive.ttl_ms = res.ttl_ms
            else:
                result.lease_revoke.header.CopyFrom(hdr)
                result.lease_revoke.revoked = res.ok
                result.lease_revoke.revision = res.revision
            return result

        svc.propose_op(op_id, kind, group, cmd, timeout, sink, build)

    def _status(self, op: kv_pb2.Op, kind: str, group: int, timeout: float, sink: Sink) -> None:
        svc = self.svc
        op_id = op.id

        def build(index: int) -> kv_pb2.OpResult:
            timers = self.expiry.leading(group)
            if timers is None:
                raise svc.driver.not_leader(svc.driver.groups[group])
            now = self.expiry.now()
            result = kv_pb2.OpResult(id=op_id)
            reader = svc.storage.kv(group)
            if kind == "lease_time_to_live":
                ttl = result.lease_time_to_live
                ttl.header.CopyFrom(svc._header(group, index))
                lease = op.lease_time_to_live.id
                left = timers.remaining_ms(lease, now)
                if left is not None:
                    ttl.lease.id = lease
                    ttl.lease.ttl_ms = timers.ttl_ms[lease]
                    ttl.lease.remaining_ms = left
                    if op.lease_time_to_live.keys:
                        ttl.lease.keys.extend(reader.lease_keys(lease, MAX_LISTED_KEYS))
                return result
            listed = result.lease_list
            listed.header.CopyFrom(svc._header(group, index))
            for lease in sorted(timers.deadline):
                left = timers.remaining_ms(lease, now)
                listed.leases.add(id=lease, ttl_ms=timers.ttl_ms[lease], remaining_ms=left or 0)
            return result

        svc.read_op(op_id, kind, group, timeout, sink, build)
