"""Typed client errors, one table from gRPC status codes to exception classes.

``KVError.definite`` is True when the operation certainly did not take effect
(rejected input, refused before proposing) and False when the outcome is unknown
(timeouts, connection lost after sending). Jepsen histories record the former as
``fail`` and the latter as ``info``.
"""

from __future__ import annotations

import grpc

from kvstore._pb import kv_pb2


class KVError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, definite: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.definite = definite


class NotLeader(KVError):
    """The node is not the leader; ``leader_id`` / ``leader_endpoint`` hint at who is."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(
        self, message: str, *, definite: bool = True, leader_id: int = 0, leader_endpoint: str = ""
    ) -> None:
        super().__init__(message, definite=definite)
        self.leader_id = leader_id
        self.leader_endpoint = leader_endpoint


class Unavailable(KVError):
    """No leader, no quorum, or no endpoint reachable."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(KVError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class InvalidArgument(KVError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, *, definite: bool = True) -> None:
        super().__init__(message, definite=definite)


class NotFound(KVError):
    """What the call names does not exist: a lease that expired, was revoked or never
    granted (nothing was written)."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, message: str, *, definite: bool = True) -> None:
        super().__init__(message, definite=definite)


class ResourceExhausted(KVError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unimplemented(KVError):
    code = grpc.StatusCode.UNIMPLEMENTED

    def __init__(self, message: str, *, definite: bool = True) -> None:
        super().__init__(message, definite=definite)


class PermissionDenied(KVError):
    """The client's certificate lacks the role the call needs (the message names it)."""

    code = grpc.StatusCode.PERMISSION_DENIED

    def __init__(self, message: str, *, definite: bool = True) -> None:
        super().__init__(message, definite=definite)


class OutOfRange(KVError):
    """A revision outside the shard's history: past the current revision, or compacted
    (then a Compacted)."""

    code = grpc.StatusCode.OUT_OF_RANGE

    def __init__(self, message: str, *, definite: bool = True, compact_revision: int = 0) -> None:
        super().__init__(message, definite=definite)
        self.compact_revision = compact_revision


class Compacted(OutOfRange):
    """The revision asked for was compacted: the shard's history holds the revisions
    above ``compact_revision``; ``oldest`` is the oldest still available."""

    @property
    def oldest(self) -> int:
        return self.compact_revision + 1


class SessionExpired(KVError):
    """The write's client session expired on the node (idle for 5 minutes of log time or
    100,000 log entries): the node refused it and applied nothing. The client has started
    a new session already; a write no earlier attempt can have applied was sent again
    under it, so callers see this only for a write that may have applied before
    (``definite`` False: indeterminate)."""

    code = grpc.StatusCode.ABORTED

    def __init__(self, message: str, *, definite: bool = False) -> None:
        super().__init__(message, definite=definite)


_BY_CODE: dict[int, type[KVError]] = {
    grpc.StatusCode.PERMISSION_DENIED.value[0]: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION.value[0]: NotLeader,
    grpc.StatusCode.UNAVAILABLE.value[0]: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED.value[0]: DeadlineExceeded,
    grpc.StatusCode.INVALID_ARGUMENT.value[0]: InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]: ResourceExhausted,
    grpc.StatusCode.NOT_FOUND.value[0]: NotFound,
    grpc.StatusCode.UNIMPLEMENTED.value[0]: Unimplemented,
    grpc.StatusCode.OUT_OF_RANGE.value[0]: OutOfRange,
}


def from_code(
    code: int,
    message: str,
    *,
    definite: bool,
    leader_id: int = 0,
    leader_endpoint: str = "",
    compact_revision: int = 0,
) -> KVError:
    cls = _BY_CODE.get(code, KVError)
    if cls is OutOfRange:
        if compact_revision:
            return Compacted(message, definite=definite, compact_revision=compact_revision)
        return OutOfRange(message, definite=definite)
    if cls is NotLeader:
        return NotLeader(
            message, definite=definite, leader_id=leader_id, leader_endpoint=leader_endpoint
        )
    return cls(message, definite=definite)


def from_error(err: kv_pb2.Error, *, definite: bool) -> KVError:
    """The typed error for a node's error answer (``definite``: as the caller judges it,
    across its attempts)."""
    return from_code(
        err.code,
        err.message,
        definite=definite,
        leader_id=err.leader_id,
        leader_endpoint=err.leader_endpoint,
        compact_revision=err.compact_revision,
    )
