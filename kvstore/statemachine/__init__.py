"""The replicated key-value state machine: commands, their batch codec, and apply.

One log entry's data is ``encode_batch([...])``; applying it yields one ApplyResult per
command (see apply.py for the exactly-once session rule). Performs no I/O: storage runs
``apply_commands`` inside its write transaction (kvstore.storage).
"""

from kvstore.statemachine.apply import (
    MAX_KEY_SIZE,
    SESSION_FORGET_ENTRIES,
    SESSION_FORGET_MS,
    SESSION_IDLE_ENTRIES,
    SESSION_IDLE_MS,
    SESSION_WINDOW,
    KVTxn,
    MemoryKV,
    SessionId,
    SessionState,
    advance_applied_time,
    apply_commands,
)
from kvstore.statemachine.commands import (
    Batch,
    BatchDecodeError,
    Cas,
    Command,
    Delete,
    Put,
    adds_data,
    decode_batch,
    decode_entry,
    encode_batch,
    entry_stamp,
    entry_time_ms,
)
from kvstore.statemachine.leases import (
    LeaseCheckpoint,
    LeaseCommand,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRecord,
    LeaseRevoke,
)
from kvstore.statemachine.types import ApplyError, ApplyResult, KeyValue

__all__ = [
    "MAX_KEY_SIZE",
    "SESSION_FORGET_ENTRIES",
    "SESSION_FORGET_MS",
    "SESSION_IDLE_ENTRIES",
    "SESSION_IDLE_MS",
    "SESSION_WINDOW",
    "ApplyError",
    "ApplyResult",
    "Batch",
    "BatchDecodeError",
    "Cas",
    "Command",
    "Delete",
    "KVTxn",
    "KeyValue",
    "LeaseCheckpoint",
    "LeaseCommand",
    "LeaseGrant",
    "LeaseKeepAlive",
    "LeaseRecord",
    "LeaseRevoke",
    "MemoryKV",
    "Put",
    "SessionId",
    "SessionState",
    "adds_data",
    "advance_applied_time",
    "apply_commands",
    "decode_batch",
    "decode_entry",
    "encode_batch",
    "entry_stamp",
    "entry_time_ms",
]
