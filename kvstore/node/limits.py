"""Request limits (documented in the README); breaking one is INVALID_ARGUMENT naming it.

Defaults: key 510 bytes (LMDB's 511-byte key limit minus the 1-byte data prefix; the state
machine's MAX_KEY_SIZE), value 1 MiB, 1000 ops per client batch message, scan limit
10000 rows, client gRPC messages 4 MiB. The server's gRPC receive limit is larger
(64 MiB) because InstallSnapshot travels on the same port; client messages are
checked against ``max_request_bytes`` here.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.node.errors import InvalidOp
from kvstore.statemachine import MAX_KEY_SIZE


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    max_key_bytes: int = MAX_KEY_SIZE
    max_value_bytes: int = 1 << 20
    max_batch_ops: int = 1000
    max_scan_limit: int = 10000
    max_request_bytes: int = 4 << 20
    server_max_message_bytes: int = 64 << 20

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
