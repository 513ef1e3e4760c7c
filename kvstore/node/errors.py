"""Errors a node answers one client operation with, each with its gRPC status code.

Rule: ``definite`` is True only when the operation certainly did not take
effect (it was never proposed, or the slot it was proposed at holds another
entry); timeouts and lost leadership after proposing are indefinite.
"""

from __future__ import annotations

# grpc.StatusCode values, kept as ints so kvstore.node does not import grpc here.
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
ABORTED = 10
OUT_OF_RANGE = 11
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14


class OpError(Exception):
    code: int = UNAVAILABLE

    def __init__(
        self,
        message: str,
        *,
        definite: bool,
        leader_id: int = 0,
        leader_endpoint: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.definite = definite
        self.leader_id = leader_id
        self.leader_endpoint = leader_endpoint


class NotLeaderOp(OpError):
    """This node is not the leader; ``leader_id``/``leader_endpoint`` hint at who is."""

    code = FAILED_PRECONDITION


class UnavailableOp(OpError):
    code = UNAVAILABLE


class DeadlineOp(OpError):
    code = DEADLINE_EXCEEDED


class InvalidOp(OpError):
    code = INVALID_ARGUMENT


class NotFoundOp(OpError):
    """What the op names does not exist (a lease). Definite: nothing happened."""

    code = NOT_FOUND

    def __init__(self, message: str) -> None:
        super().__init__(message, definite=True)


class ExhaustedOp(OpError):
    code = RESOURCE_EXHAUSTED


class UnimplementedOp(OpError):
    code = UNIMPLEMENTED


class AbortedOp(OpError):
    """An admin operation gave up and undid what it had started (a merge rolled back):
    nothing changed; retrying at once would likely meet the same cause. Definite."""

    code = ABORTED

    def __init__(self, message: str) -> None:
        super().__init__(message, definite=True)


class SessionExpiredOp(OpError):
    """The write's client session expired (statemachine/apply.py): nothing applied, and
    the session refuses every command until the client starts a new one. Indefinite: an
    earlier attempt of the same write may have applied."""

    code = ABORTED

    def __init__(self, message: str) -> None:
        super().__init__(message, definite=False)


class StaleRouteOp(OpError):
    """Routed with a stale shard map: this node has no replica of the shard that owns the
    key, or the shard's version differs. ``shards``: the node's current descriptors that
    overlap the request (kvstore.shard.Descriptor), for the client's cache. Definite."""

    code = ABORTED

    def __init__(self, message: str, shards: tuple[object, ...] = ()) -> None:
        super().__init__(message, definite=True)
        self.shards = shards


class InternalOp(OpError):
    """Building the answer failed on this node (a bug or a damaged record): the client
    gets this instead of waiting for an answer that will never come."""

    code = INTERNAL


class OutOfRangeOp(OpError):
    """A revision outside the shard's history: compacted (``compact_revision`` > 0, the
    oldest available is one above it) or past what the replica applied. Definite."""

    code = OUT_OF_RANGE

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message, definite=True)
        self.compact_revision = compact_revision
