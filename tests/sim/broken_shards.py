"""Deliberately broken copies of the shard rules, to prove the sharded simulation
catches them (as broken_raft.py does for the Raft core).

Rule: each breaks exactly one rule of the real storage writer, only inside ``broken(name)``
(the patch is undone on exit); a schedule that passes with the broken rule where it
should fail is a gap in the simulation's checkers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

from kvstore.node import lifecycle
from kvstore.storage import tables, writer

UNFENCED_SPLIT = "unfenced-split"
"""The range check at apply is gone: a write routed to the parent before a split and
committed after it still applies there, for a key the new shard now owns."""

NO_SESSION_COPY = "no-session-copy"
"""A split does not copy the parent's client sessions to the new shard: a write that
applied in the parent and is retried against the new shard applies again."""

OVERLAPPING_SNAPSHOT = "overlapping-snapshot"
"""The node's lifecycle rule (kvstore/node/lifecycle.py, which the simulation runs as
the driver does) lets a snapshot in although another local replica overlaps its range
(TiKV #7002): the lagging parent's later entries write into the new shard's keys."""

EARLY_MERGE = "early-merge"
"""The merge coordinator commits once the source's leader applied the PrepareMerge,
not every source replica (TiKV #6460): a lagging replica's data is merged incomplete.
(A coordinator rule: run_shard_schedule(wait_all=False); nothing is patched.)"""


@contextmanager
def broken(name: str) -> Iterator[None]:
    if name == UNFENCED_SPLIT:
        with mock.patch.object(writer, "owns", lambda owned, key: True):
            yield
    elif name == NO_SESSION_COPY:
        with mock.patch.object(tables.GroupTables, "copy_sessions_to", lambda self, group: None):
            yield
    elif name == OVERLAPPING_SNAPSHOT:
        with mock.patch.object(lifecycle, "snapshot_fits", lambda r, m: True):
            yield
    elif name == EARLY_MERGE:
        yield
    else:
        raise ValueError(f"unknown broken variant {name!r}")
