"""Deliberately broken copies of the Raft core, to prove the simulation catches them.

Rule: each breaks exactly one rule of the real core and is registered by name in
``cluster.EXTRA_FACTORIES`` (tests only); a schedule that passes with the broken core
where it should fail is a gap in the simulation, not in the core.
"""

from __future__ import annotations

from kvstore.consensus.raft import Raft, RawNode
from kvstore.consensus.raft.log import RaftLog
from kvstore.consensus.raft.read_only import ReadOnly
from kvstore.consensus.types import Config, LogStorage

from .checkers import RAFT_TRAITS
from .cluster import EXTRA_FACTORIES

FIGURE8 = "raft-figure8"
"""Commits an earlier term's entry by counting replicas (breaks Raft section 5.4.2, the
rule Figure 8 of the paper motivates)."""

NO_READ_RETRY = "raft-no-read-retry"
"""Heartbeats carry no read context: a read whose own round was lost waits for a later
read (the Raft bug of issue 10, point 2)."""


class _CountingLog(RaftLog):
    def maybe_commit(self, index: int, term: int) -> bool:
        if self.committed < index <= self.last_index():
            self.committed = index
            return True
        return False


def _figure8(config: Config, storage: LogStorage) -> RawNode:
    node = RawNode(config, storage)
    node.raft.log.__class__ = _CountingLog
    return node


class _ReadOnlyNoRetry(ReadOnly):
    def last_pending_ctx(self) -> bytes:
        return b""


class _RaftNoRetry(Raft):
    def _reset(self, term: int) -> None:
        super()._reset(term)
        self.read_only = _ReadOnlyNoRetry()


def _no_read_retry(config: Config, storage: LogStorage) -> RawNode:
    node = RawNode(config, storage)
    node.raft.__class__ = _RaftNoRetry
    node.raft.read_only = _ReadOnlyNoRetry()
    return node


def register() -> None:
    EXTRA_FACTORIES[FIGURE8] = (_figure8, RAFT_TRAITS)
    EXTRA_FACTORIES[NO_READ_RETRY] = (_no_read_retry, RAFT_TRAITS)


register()
