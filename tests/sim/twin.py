"""The in-memory twin of a node's I/O, under the node's own replica loop
(kvstore/node/replica.py): storage, network and clock, for both simulations in this
folder (cluster.py, and the driver-interleaving model driver_model.py).

Rules this module keeps:
- ``persist`` is the node's one storage transaction for a batch (kvstore/node/persist.py):
  save the snapshot, entries and hard state, apply the committed entries to the state
  machine, record the membership the plan carries; every step reports to the checker.
  MemoryStorage is the disk and the state machine is durable with it (apply shares the
  transaction, as in LMDB).
- A conf change takes effect in the core in ``ReplicaLoop.begin`` (before the persist),
  never here; the plan's ``conf_state`` is the membership after the batch's changes.
- Nothing here decides anything the replica loop decides: it only stores, applies and
  reports, so what the simulations check is the production Ready handling.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    Snapshot,
    has_membership,
)
from kvstore.node.metrics import NodeMetrics
from kvstore.node.persist import Plan
from kvstore.statemachine import ApplyResult, BatchDecodeError, decode_batch

from .checkers import GENESIS_DIGEST, Checker, SafetyViolation, chain, decode_image
from .network import Network

METRICS = NodeMetrics()
"""The replica loops' metrics sink (never read in the simulations): one for all nodes."""


class SimStorage(MemoryStorage):
    """MemoryStorage whose ``initial_state`` reports the membership as of the applied
    index, as the LMDB storage does (its meta holds the conf state the apply wrote).

    Without this a core restarted with ``Config.applied`` past the snapshot would boot
    with the snapshot's membership and never see the conf changes in between, since
    entries up to ``applied`` are not re-emitted.
    """

    def __init__(self, voters: frozenset[int]) -> None:
        super().__init__(voters)
        self.boot_conf: ConfState | None = None

    def initial_state(self) -> tuple[HardState, ConfState]:
        hs, cs = super().initial_state()
        return hs, self.boot_conf if self.boot_conf is not None else cs


@dataclass(slots=True)
class StateMachine:
    """The applied state: index, digest of the applied history, membership."""

    index: int = 0
    digest: bytes = GENESIS_DIGEST
    conf_state: ConfState = field(default_factory=ConfState)


class TwinNode(Protocol):
    """What the twin needs of a simulated node."""

    id: int
    storage: SimStorage
    sm: StateMachine


class Clock:
    """The replica loop's clock (replica.Clock): a simulation's step counter."""

    def __init__(self, now: Callable[[], int]) -> None:
        self._now = now

    def now(self) -> float:
        return float(self._now())

    def wall_ms(self) -> int:
        return self._now()


class StorageView:
    """A node's MemoryStorage as the replica loop reads it (replica.ReplicaStorage)."""

    tight = False

    def __init__(self, node: TwinNode) -> None:
        self._node = node

    def first_index(self, group: int) -> int:
        return self._node.storage.first_index()

    def member_addresses(self, group: int) -> dict[int, str]:
        return {}

    def applied_time(self, group: int) -> int:
        return 0  # the simulated state machine keeps no causal time (no causal reads)

    def log_time(self, group: int) -> int:
        return 0  # nor log time (its state machine has no sessions)


def sender(net: Network, now: Callable[[], int]) -> Callable[[list[Message]], None]:
    """The replica loop's transport: hand every message to the simulated network."""

    def send(msgs: list[Message]) -> None:
        t = now()
        for m in msgs:
            net.send(m, t)

    return send


class Twin:
    """The storage side of every node of one simulation (the checker sees each step)."""

    def __init__(self, checker: Checker, stats: Counter[str], note: Callable[[str], None]) -> None:
        self.checker = checker
        self.stats = stats
        self.note = note

    def persist(self, node: TwinNode, plans: list[Plan]) -> dict[int, list[ApplyResult]]:
        """One transaction for ``plans``; returns each group's apply results (one per
        command of an entry that holds a command batch, as the LMDB apply answers)."""
        st = node.storage
        for p in plans:
            rd = p.rd
            if rd.snapshot is not None and not rd.snapshot.is_empty():
                self.install(node, rd.snapshot)
            elif rd.snapshot is not None:
                self.adopt(node, rd.snapshot)
            if rd.entries:
                st.append(rd.entries)
                self.checker.on_append(node.id, st, rd.entries)
            if rd.hard_state is not None:
                st.set_hard_state(rd.hard_state)
                self.checker.on_hard_state(node.id, rd.hard_state)
            durable_commit = max(st.hard_state.commit, st.snapshot().metadata.index)
            for e in rd.committed:
                self.apply(node, e, durable_commit)
            if p.conf_state is not None:
                node.sm.conf_state = p.conf_state
        return self.results(plans)

    @staticmethod
    def results(plans: list[Plan]) -> dict[int, list[ApplyResult]]:
        """The apply results of ``plans``' transaction (staged or committed)."""
        results: dict[int, list[ApplyResult]] = {}
        for p in plans:
            out = [r for e in p.rd.committed for r in _answers(e)]
            if out:
                results[p.group] = out
        return results

    def apply(self, node: TwinNode, e: Entry, durable_commit: int) -> None:
        if e.index <= node.sm.index:
            raise SafetyViolation(
                f"node {node.id} re-applies index {e.index} (applied {node.sm.index})"
            )
        digest = chain(node.sm.digest, e)
        self.checker.on_apply(node.id, e, node.sm.index, digest, durable_commit)
        node.sm.index = e.index
        node.sm.digest = digest
        if e.type == EntryType.CONF_CHANGE:
            self.stats["conf_changes_applied"] += 1
        self.stats["applied"] += 1

    def install(self, node: TwinNode, snap: Snapshot) -> None:
        self.checker.on_install(node.id, snap, node.sm.index)
        node.storage.apply_snapshot(snap)
        index, digest = decode_image(snap.data)
        node.sm = StateMachine(index, digest, snap.metadata.conf_state)
        self.checker.max_applied = max(self.checker.max_applied, index)
        self.stats["installs"] += 1
        self.note(f"install {node.id} snapshot at {index}")

    def adopt(self, node: TwinNode, snap: Snapshot) -> None:
        """A snapshot at index 0: a joiner's base membership, no data (the join contract)."""
        node.storage.apply_snapshot(snap)
        if not has_membership(node.sm.conf_state):
            node.sm.conf_state = node.storage.conf_state
        self.note(f"adopt {node.id} membership {sorted(node.sm.conf_state.voters)}")


def _answers(e: Entry) -> list[ApplyResult]:
    """What the state machine answers for ``e``: one result per command of a batch the
    replica loop proposed; nothing for a client's raw value or an empty entry."""
    if e.type != EntryType.NORMAL or not e.data:
        return []
    try:
        commands = decode_batch(e.data)
    except BatchDecodeError:
        return []
    return [ApplyResult(e.index, e.index, True, None, None) for _ in commands]
