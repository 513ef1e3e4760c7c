"""The kvstore client library: ``Client`` (sync) and ``AsyncClient``, typed errors.

from kvstore.client import Client
with Client(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]) as c:
    c.put("k", "v"); c.get("k")  # b"v"
"""

from kvstore.client._async import DEFAULT_ENDPOINTS, AsyncClient
from kvstore.client._sync import Client, Watcher
from kvstore.client._watch import AsyncWatcher, WatchEvent, WatchProgress
from kvstore.client.errors import (
    Compacted,
    DeadlineExceeded,
    InvalidArgument,
    KVError,
    NotFound,
    NotLeader,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    SessionExpired,
    Unavailable,
    Unimplemented,
)

__all__ = [
    "DEFAULT_ENDPOINTS",
    "AsyncClient",
    "AsyncWatcher",
    "Client",
    "Compacted",
    "DeadlineExceeded",
    "InvalidArgument",
    "KVError",
    "NotFound",
    "NotLeader",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "SessionExpired",
    "Unavailable",
    "Unimplemented",
    "WatchEvent",
    "WatchProgress",
    "Watcher",
]
