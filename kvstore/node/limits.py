"""Request limits and in-flight budgets (documented in the README); breaking a request
limit is INVALID_ARGUMENT naming it, going past the node's budget is RESOURCE_EXHAUSTED.

Defaults: key 8 KiB (the state machine's MAX_KEY_SIZE; storage keeps keys past LMDB's key
limit under a prefix and a hash, kvstore/storage/keys.py), value 1 MiB, 1000 ops per
client batch message, scan limit 10000 rows and 2 MiB of keys and values per answer,
client gRPC messages 4 MiB both ways. The server's gRPC message limit is larger (64 MiB)
because peer traffic shares the port; client messages are checked against
``max_request_bytes`` here.

Memory rule: a node holds at most ``max_node_inflight_*`` of client work (requests
admitted and not yet answered, answers built and not yet sent); a batch stream stops
reading from its client past ``max_stream_inflight_*`` and builds no more answers until
the client has taken some, so a client that never reads costs a bounded amount.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.node.errors import ExhaustedOp, InvalidOp
from kvstore.statemachine import MAX_KEY_SIZE


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    max_key_bytes: int = MAX_KEY_SIZE
    max_value_bytes: int = 1 << 20
    max_batch_ops: int = 1000
    max_scan_limit: int = 10000
    max_scan_bytes: int = 2 << 20
    """A scan answer stops once its rows hold this many key and value bytes (at least
    one row) and says ``more``: with 1 MiB values it stays under max_response_bytes."""
    max_request_bytes: int = 4 << 20
    max_response_bytes: int = 4 << 20
    """A batch stream packs answers into messages of at most this size."""
    server_max_message_bytes: int = 64 << 20
    max_stream_inflight_ops: int = 4096
    max_stream_inflight_bytes: int = 16 << 20
    max_node_inflight_ops: int = 65536
    max_node_inflight_bytes: int = 128 << 20

    def check_key(self, key: bytes) -> None:
        if not key:
            raise InvalidOp("key must not be empty", definite=True)
        if len(key) > self.max_key_bytes:
            raise InvalidOp(
                f"key is {len(key)} bytes; limit max_key_bytes={self.max_key_bytes}",
                definite=True,
            )

    def check_value(self, value: bytes) -> None:
        if len(value) > self.max_value_bytes:
            raise InvalidOp(
                f"value is {len(value)} bytes; limit max_value_bytes={self.max_value_bytes}",
                definite=True,
            )

    def check_batch(self, ops: int, size: int) -> None:
        if ops > self.max_batch_ops:
            raise InvalidOp(
                f"batch has {ops} ops; limit max_batch_ops={self.max_batch_ops}", definite=True
            )
        if size > self.max_request_bytes:
            raise InvalidOp(
                f"request is {size} bytes; limit max_request_bytes={self.max_request_bytes}",
                definite=True,
            )

    def scan_limit(self, asked: int) -> int:
        return self.max_scan_limit if asked <= 0 else min(asked, self.max_scan_limit)


DEFAULT_LIMITS = Limits()


class NodeBudget:
    """The node's client work in flight: ops admitted and not yet answered and sent, and
    their bytes (the request's share while the op runs, then the answer's until sent).

    Admission is the only place that refuses; charges after admission always land (an
    admitted op must be answered), so the totals may pass the limit by what admitted
    ops produce, which the streams bound in turn."""

    __slots__ = ("bytes", "limits", "ops")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.ops = 0
        self.bytes = 0

    def admit(self, ops: int, nbytes: int) -> None:
        """Take ``ops`` ops of ``nbytes`` bytes, or raise ExhaustedOp (definite) when the
        node already holds its limit."""
        lim = self.limits
        if self.ops >= lim.max_node_inflight_ops or self.bytes >= lim.max_node_inflight_bytes:
            which = (
                f"max_node_inflight_ops={lim.max_node_inflight_ops}"
                if self.ops >= lim.max_node_inflight_ops
                else f"max_node_inflight_bytes={lim.max_node_inflight_bytes}"
            )
            raise ExhaustedOp(
                f"node is busy: {self.ops} ops and {self.bytes} bytes of client work in "
                f"flight; limit {which}; retry later",
                definite=True,
            )
        self.charge(ops, nbytes)

    def charge(self, ops: int, nbytes: int) -> None:
        """Take without asking (work already admitted, or answers that must be sent)."""
        self.ops += ops
        self.bytes += nbytes

    def release(self, ops: int, nbytes: int) -> None:
        self.ops -= ops
        self.bytes -= nbytes
