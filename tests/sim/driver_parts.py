"""The driver-interleaving model's options and per-node state (driver_model.py).

Rule: a node's Ready handling state is the node's own (``GroupState`` and ``ReplicaLoop``
of kvstore/node); what is kept here is only what the model adds around it: the batch in
flight between ``ready()`` and ``advance()``, the inbox and ticks a real driver buffers,
and the crash planned inside the next Ready.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kvstore.consensus.types import ConfState, Core, Message, Ready, Role
from kvstore.node.pending import GroupState
from kvstore.node.replica import Batch, ReplicaLoop
from kvstore.statemachine import ApplyResult

from .cluster import CoreParams
from .network import NetConfig
from .twin import SimStorage, StateMachine


@dataclass(slots=True)
class InFlight:
    """One batch between ``ready()`` and ``advance()``."""

    batch: Batch
    committed: bool = False
    """The writer's transaction landed."""
    results: dict[int, list[ApplyResult]] = field(default_factory=dict)
    replaced: bool = False
    prior_conf: ConfState = field(default_factory=ConfState)

    @property
    def rd(self) -> Ready:
        return self.batch.readies[0][1]


@dataclass(slots=True)
class DNode:
    id: int
    storage: SimStorage
    sm: StateMachine
    group: GroupState | None = None
    """The replica's in-memory side (its core included); None while the node is down."""
    loop: ReplicaLoop | None = None
    inbox: list[Message] = field(default_factory=list)
    ticks: int = 0
    flight: InFlight | None = None
    crash_in: str = ""
    """Crash at this point of the next Ready: 'early' (after the early sends, before the
    commit), 'staged' (after the answers from the staged transaction, before its commit:
    the transaction is lost), 'committed' (after the commit, before the sends)."""
    in_begin: bool = False
    """``ReplicaLoop.begin`` is running: what it sends is the early send."""
    last_durable: tuple[SimStorage, StateMachine] | None = None
    """Storage and state machine as of the last durable transaction, kept while later
    ones were not durable (kvstore.node.persist.durable): what a power loss leaves."""

    @property
    def core(self) -> Core | None:
        return self.group.core if self.group is not None else None

    @property
    def role(self) -> Role:
        return self.group.role if self.group is not None else Role.FOLLOWER

    @property
    def leader(self) -> int:
        return self.group.leader if self.group is not None else 0


class Answer:
    """A client's completion (pending.Completion): the replica loop answers it."""

    __slots__ = ("_done", "_fn")

    def __init__(self, fn: Callable[[int], None]) -> None:
        self._fn = fn
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: ApplyResult | int, /) -> None:
        self._done = True
        self._fn(result.index if isinstance(result, ApplyResult) else result)

    def set_exception(self, exception: BaseException, /) -> None:
        self._done = True


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverOptions:
    nodes: int = 3
    steps: int = 200
    net: NetConfig = field(default_factory=lambda: NetConfig(drop=0.02, max_delay=3))
    params: CoreParams = field(default_factory=CoreParams)
    propose_prob: float = 0.5
    read_prob: float = 0.1
    crash_prob: float = 0.02
    partition_prob: float = 0.02
    snapshot_prob: float = 0.05
    membership_prob: float = 0.0
    transfer_prob: float = 0.01
    commit_prob: float = 0.5
    """Chance per action slot that a pending transaction lands (slow disks: low)."""
    finish_prob: float = 0.7
    slow_disk: int = 0
    """This node's transactions land with SLOW_COMMIT_PROB per action slot: peers' messages
    (a new leader's conflicting appends) pile into its core while a Ready is in flight."""
    unsafe_send_all_early: bool = False
    """Sabotage, for the test that proves the checks can fail: send every Ready's
    messages before its persist (votes and append answers included)."""
    unsafe_flush_nothing: bool = False
    """Sabotage: no transaction is durable (entries, votes and promises included), so a
    power loss undoes them; the test that proves the power-loss checks can fail."""


def random_options(rng: random.Random, steps: int) -> DriverOptions:
    return DriverOptions(
        nodes=rng.choice((3, 3, 5)),
        steps=steps,
        net=NetConfig(
            drop=rng.choice((0.0, 0.02, 0.1)),
            duplicate=rng.choice((0.0, 0.05)),
            max_delay=rng.choice((1, 2, 3, 5)),
        ),
        params=CoreParams(
            election_tick=rng.choice((5, 10)),
            pre_vote=rng.random() < 0.75,
            check_quorum=rng.random() < 0.75,
            max_size_per_msg=rng.choice((64, 256, 1 << 20)),
            max_inflight_msgs=rng.choice((1, 4, 256)),
        ),
        propose_prob=rng.choice((0.2, 0.5, 0.9)),
        crash_prob=rng.choice((0.01, 0.03, 0.06)),
        partition_prob=rng.choice((0.0, 0.02, 0.05)),
        snapshot_prob=rng.choice((0.0, 0.05, 0.2)),
        membership_prob=rng.choice((0.0, 0.0, 0.03)),
        transfer_prob=rng.choice((0.0, 0.02)),
        commit_prob=rng.choice((0.03, 0.15, 0.5, 0.9)),
        finish_prob=rng.choice((0.3, 0.7, 1.0)),
        slow_disk=rng.choice((0, 0, 1, 2)),
    )
