"""Sizes the client checks before sending (issue 14).

Rule: a request no node would accept fails at once with InvalidArgument naming the
limit, as the node would name it, instead of travelling: a 64 MiB value used to end in
DeadlineExceeded after the whole timeout, with an internal gRPC error in its text. The
nodes keep their own checks (kvstore/node/limits.py, whose defaults these equal; a test
keeps them equal).
"""

from __future__ import annotations

from kvstore.client.errors import InvalidArgument

MAX_KEY_BYTES = 8192
MAX_VALUE_BYTES = 1 << 20
MAX_REQUEST_BYTES = 4 << 20


def to_bytes(x: bytes | str) -> bytes:
    """A key or value as sent (a str as UTF-8)."""
    return x.encode() if isinstance(x, str) else bytes(x)


def check_sizes(key: bytes, *values: bytes) -> None:
    if len(key) > MAX_KEY_BYTES:
        raise InvalidArgument(f"key is {len(key)} bytes; limit max_key_bytes={MAX_KEY_BYTES}")
    for v in values:
        if len(v) > MAX_VALUE_BYTES:
            raise InvalidArgument(
                f"value is {len(v)} bytes; limit max_value_bytes={MAX_VALUE_BYTES}"
            )
    size = len(key) + sum(len(v) for v in values)
    if size > MAX_REQUEST_BYTES:
        raise InvalidArgument(
            f"request is {size} bytes; limit max_request_bytes={MAX_REQUEST_BYTES}"
        )
