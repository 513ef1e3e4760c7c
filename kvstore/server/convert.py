"""Client protobuf <-> state machine commands and results (the KV servicers' codec).

Rule: everything a client sends is checked against the limits here, before it
reaches the driver; a violation is an InvalidOp naming the limit.
"""

from __future__ import annotations

from typing import Any

import grpc

from kvstore._pb import kv_pb2
from kvstore.node.errors import (
    InvalidOp,
    NotFoundOp,
    OpError,
    OutOfRangeOp,
    SessionExpiredOp,
    StaleRouteOp,
)
from kvstore.node.limits import Limits
from kvstore.shard.descriptor import Descriptor
from kvstore.statemachine import ApplyError, ApplyResult, Cas, Command, Delete, KeyValue, Put

READ_MODES = {
    kv_pb2.READ_MODE_STRONG: "strong",
    kv_pb2.READ_MODE_EVENTUAL: "eventual",
    kv_pb2.READ_MODE_CAUSAL: "causal",
}


def read_mode(mode: int) -> str:
    name: str | None = READ_MODES.get(mode)  # type: ignore[call-overload]
    if name is None:
        raise InvalidOp(f"unknown read mode {mode}", definite=True)
    return name


def check_session(client_id: int, incarnation: int) -> None:
    """A session is (client_id, incarnation): a client_id alone would hand a restarted
    client the answers its earlier process stored (and not apply its writes)."""
    if client_id and not incarnation:
        raise InvalidOp(
            "client_id needs a nonzero incarnation (a fresh random number each time the "
            "client starts)",
            definite=True,
        )


def put_command(req: kv_pb2.PutRequest, limits: Limits) -> Put:
    limits.check_key(req.key)
    limits.check_value(req.value)
    check_session(req.client_id, req.incarnation)
    return Put(req.key, req.value, req.client_id, req.seq, req.incarnation, req.lease)


def delete_command(req: kv_pb2.DeleteRequest, limits: Limits) -> Delete:
    limits.check_key(req.key)
    check_session(req.client_id, req.incarnation)
    return Delete(req.key, req.client_id, req.seq, req.incarnation)


def cas_command(req: kv_pb2.CasRequest, limits: Limits) -> Cas:
    limits.check_key(req.key)
    limits.check_value(req.new_value)
    check_session(req.client_id, req.incarnation)
    which = req.WhichOneof("compare")
    new_value = None if req.delete_key else req.new_value
    cid, seq, inc, lease = req.client_id, req.seq, req.incarnation, req.lease
    if which == "expected_value":
        return Cas(req.key, new_value, req.expected_value, None, cid, seq, inc, lease)
    if which == "expected_version":
        return Cas(req.key, new_value, None, req.expected_version, cid, seq, inc, lease)
    if which == "expect_absent":
        return Cas(req.key, new_value, None, 0, cid, seq, inc, lease)
    raise InvalidOp("cas needs expected_value, expected_version or expect_absent", definite=True)


def check_result(res: ApplyResult) -> None:
    if res.error == ApplyError.SESSION_EXPIRED:
        raise SessionExpiredOp(
            "client session expired (idle too long, or the seq fell out of its window):"
            " nothing applied now, but an earlier attempt may have; start a new session"
            " (a new incarnation)"
        )
    if res.error == ApplyError.KEY_TOO_LARGE:
        raise InvalidOp("key over the state machine's key limit", definite=True)
    if res.error == ApplyError.LEASE_NOT_FOUND:
        raise NotFoundOp("lease not found (expired, revoked or never granted); nothing written")
    if res.error == ApplyError.LEASE_EXISTS:
        raise InvalidOp("lease id already in use", definite=True)
    if res.error == ApplyError.LEASE_INVALID:
        raise InvalidOp("lease id or TTL out of bounds", definite=True)
    if res.error == ApplyError.WRONG_SHARD:
        raise StaleRouteOp(
            f"stale route: the shard's range changed before the write applied (index {res.index})"
        )


def kv_to_pb(kv: KeyValue | None) -> kv_pb2.KeyValue | None:
    return None if kv is None else kv_pb(kv)


def kv_pb(kv: KeyValue) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(
        key=kv.key,
        value=kv.value,
        version=kv.version,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
    )


def set_kv(dst: kv_pb2.KeyValue, kv: KeyValue) -> None:
    dst.key = kv.key
    dst.value = kv.value
    dst.version = kv.version
    dst.create_revision = kv.create_revision
    dst.mod_revision = kv.mod_revision


def header(group: int, node_id: int, term: int, index: int, leader: int) -> kv_pb2.ResponseHeader:
    return kv_pb2.ResponseHeader(
        group=group, node_id=node_id, term=term, index=index, leader_id=leader
    )


def error_pb(e: OpError) -> kv_pb2.Error:
    err = kv_pb2.Error(
        code=e.code,
        message=e.message,
        leader_id=e.leader_id,
        leader_endpoint=e.leader_endpoint,
        definite=e.definite,
    )
    if isinstance(e, SessionExpiredOp):
        err.session_expired = True
    if isinstance(e, StaleRouteOp):
        err.stale_route = True
        err.shards.extend(shard_pb(d) for d in e.shards if isinstance(d, Descriptor))
    elif isinstance(e, OutOfRangeOp):
        err.compact_revision = e.compact_revision
    return err


async def abort(context: Any, err: kv_pb2.Error) -> None:
    """End the call with ``err`` as its gRPC status; the trailers carry what the client
    reads besides the code (the leader hint and whether the op certainly did not apply)."""
    await context.abort(
        _STATUS.get(err.code, grpc.StatusCode.UNKNOWN),
        err.message,
        trailing_metadata=(
            ("kvstore-leader-id", str(err.leader_id)),
            ("kvstore-leader-endpoint", err.leader_endpoint),
            ("kvstore-definite", "1" if err.definite else "0"),
        ),
    )


_STATUS = {c.value[0]: c for c in grpc.StatusCode}


def shard_pb(d: Descriptor) -> kv_pb2.ShardDescriptor:
    return kv_pb2.ShardDescriptor(
        id=d.id,
        start=d.start,
        end=d.end,
        version=d.epoch.version,
        conf_ver=d.epoch.conf_ver,
        voters=d.voters,
        learners=d.learners,
    )


def fill_write_result(
    result: kv_pb2.OpResult,
    cmd: Command,
    res: ApplyResult,
    hdr: kv_pb2.ResponseHeader,
    want_prev: bool,
) -> None:
    """Fill ``result``'s put/delete/cas answer in place (no intermediate messages: building
    a response and copying it in costs several times more per op)."""
    check_result(res)
    sub: kv_pb2.PutResponse | kv_pb2.DeleteResponse | kv_pb2.CasResponse
    if isinstance(cmd, Put):
        sub = result.put
        if not want_prev:
            sub.revision = res.revision
            sub.header.CopyFrom(hdr)
            return
    elif isinstance(cmd, Delete):
        sub = result.delete
        sub.deleted = res.ok
    else:
        sub = result.cas
        sub.succeeded = res.ok
    sub.revision = res.revision
    sub.header.CopyFrom(hdr)
    if res.prev is not None:
        set_kv(sub.prev_kv, res.prev)
