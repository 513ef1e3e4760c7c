"""The replicated key-value state machine: commands, their batch codec, and apply.

One log entry's data is ``encode_batch([...])``; applying it yields one ApplyResult per
command (see apply.py for the exactly-once session rule). Performs no I/O: storage runs
``apply_commands`` inside its write transaction (kvstore.storage).
"""

from kvstore.statemachine.apply import (
    MAX_KEY_SIZE,
    SESSION_IDLE_ENTRIES,
    SESSION_SWEEP_EVERY,
    SESSION_WINDOW,
    KVTxn,
    MemoryKV,
    apply_commands,
    end_entry,
)
from kvstore.statemachine.commands import (
    BatchDecodeError,
    Cas,
    Command,
    Delete,
    Put,
    decode_batch,
    encode_batch,
)
from kvstore.statemachine.types import ApplyError, ApplyResult, KeyValue

__all__ = [
    "MAX_KEY_SIZE",
    "SESSION_IDLE_ENTRIES",
    "SESSION_SWEEP_EVERY",
    "SESSION_WINDOW",
    "ApplyError",
    "ApplyResult",
    "BatchDecodeError",
    "Cas",
    "Command",
    "Delete",
    "KVTxn",
    "KeyValue",
    "MemoryKV",
    "Put",
    "apply_commands",
    "decode_batch",
    "encode_batch",
    "end_entry",
]
