"""RawNode: the Core contract over the Raft state machine (performs no I/O).

Ready handling, the choice documented here:
- ``Ready.entries`` are every log entry not yet handed out; ``Ready.hard_state`` and
  ``Ready.snapshot`` likewise. The driver persists them, then sends ``messages``.
- ``Ready.committed`` holds only entries that are durable locally by the time the
  driver applies them: entries of earlier Readies that were advanced, OR entries of
  this same ``Ready.entries`` (the driver persists those in the same transaction before
  applying). So when an earlier Ready's entries are still unadvanced, this Ready's
  committed entries stop below them. No committed entries while a snapshot is pending.
- ``advance(rd)`` reports that ``rd`` was persisted and applied: only then does a
  leader count its own replica of ``rd.entries`` towards commit, and only then do
  ``rd.committed`` count as applied.
"""

from __future__ import annotations

from kvstore.consensus.raft.raft import Raft
from kvstore.consensus.types import (
    ConfChange,
    Config,
    ConfState,
    Core,
    EntryType,
    HardState,
    LogStorage,
    Message,
    ProposalId,
    Ready,
    Role,
    SoftState,
    Status,
)


class RawNode:
    def __init__(self, config: Config, storage: LogStorage) -> None:
        self.raft = Raft(config, storage)
        self.dropped = self.raft.dropped
        self._prev_soft = self.raft.soft_state()
        self._prev_hard = self.raft.hard_state()

    # -- inputs --------------------------------------------------------------------------
    def tick(self) -> None:
        self.raft.tick()

    def step(self, msg: Message) -> None:
        self.raft.step(msg)

    def propose(self, data: bytes) -> ProposalId:
        return self.raft.propose(data, EntryType.NORMAL)

    def propose_conf_change(self, change: ConfChange) -> ProposalId:
        return self.raft.propose_conf_change(change)

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        return self.raft.apply_conf_change(change)

    def read_index(self, ctx: bytes) -> None:
        self.raft.read_index(ctx)

    def transfer_leadership(self, to: int) -> None:
        self.raft.transfer_leadership(to)

    def report_unreachable(self, peer: int) -> None:
        self.raft.report_unreachable(peer)

    def report_snapshot(self, peer: int, ok: bool) -> None:
        self.raft.report_snapshot(peer, ok)

    def campaign(self) -> None:
        self.raft.hup(transfer=False)

    # -- outputs -------------------------------------------------------------------------
    def _commit_limit(self) -> int:
        u = self.raft.log.unstable
        if u.offset_in_progress > u.offset:
            return u.offset - 1  # entries of an unadvanced Ready are not durable yet
        return self.raft.log.last_index()

    def has_ready(self) -> bool:
        r = self.raft
        log = r.log
        return bool(
            r.msgs
            or r.read_states
            or log.unstable_to_persist()
            or log.snapshot_to_persist() is not None
            or log.has_committed_to_apply(self._commit_limit())
            or r.soft_state() != self._prev_soft
            or r.hard_state() != self._prev_hard
        )

    def ready(self) -> Ready:
        r = self.raft
        log = r.log
        soft, hard = r.soft_state(), r.hard_state()
        committed = log.committed_to_apply(self._commit_limit())
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            entries=tuple(log.unstable_to_persist()),
            snapshot=log.snapshot_to_persist(),
            messages=tuple(r.msgs),
            committed=tuple(committed),
            read_states=tuple(r.read_states),
        )
        self._prev_soft, self._prev_hard = soft, hard
        r.msgs = []
        r.read_states = []
        log.accept_in_progress()
        if committed:
            log.applying = committed[-1].index
        return rd

    def advance(self, rd: Ready) -> None:
        r = self.raft
        if rd.snapshot is not None:
            r.log.stable_snap_to(rd.snapshot.metadata.index)
        if rd.entries:
            last = rd.entries[-1]
            r.on_persisted(last.index, last.term)
        if rd.committed:
            r.on_applied(rd.committed)

    def status(self, *, progress: bool = False) -> Status:
        r = self.raft
        return Status(
            id=r.id,
            group=r.group,
            role=r.visible_role(),
            term=r.term,
            leader=r.lead,
            commit=r.log.committed,
            applied=r.log.applied,
            last_index=r.log.last_index(),
            conf_state=r.tracker.conf_state(),
            progress=r.tracker.peer_progress() if progress and r.role is Role.LEADER else (),
        )

    @property
    def soft_state(self) -> SoftState:
        return self.raft.soft_state()

    @property
    def hard_state(self) -> HardState:
        return self.raft.hard_state()


def _implements_core(config: Config, storage: LogStorage) -> Core:
    """Never called: makes mypy prove that RawNode satisfies the Core protocol."""
    return RawNode(config, storage)
