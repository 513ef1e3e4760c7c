"""Storage errors. Invariant: when one is raised from a write, its transaction was aborted."""

from __future__ import annotations


class StorageError(Exception):
    """Base class of kvstore.storage errors."""


class StorageFullError(StorageError):
    """The LMDB map is full (MapFullError). The write transaction was aborted and nothing
    of it persisted; reads still work, and smaller writes or compaction may succeed."""


class CorruptionError(StorageError):
    """Stored bytes failed their checksum or do not decode. The data is never served.

    ``group`` and ``index`` (the log index, when the bad record is a log entry) say where.
    """

    def __init__(self, what: str, *, group: int, index: int | None = None) -> None:
        where = f"group {group}" + (f" index {index}" if index is not None else "")
        super().__init__(f"corruption in {where}: {what}")
        self.group = group
        self.index = index
