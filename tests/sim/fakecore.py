"""A tiny fake core (fixed-leader primary-backup) and deliberately broken wrappers.

They let the simulator and its checkers be tested on their own: the fake with one
leader is safe, so every check must pass on it; with two leaders (split brain), or
wrapped to corrupt what it applies or to forget its hard state, the checkers must fail.
Rule: the fake keeps the Ready contract (entries and hard state persisted before the
messages that depend on them), so any failure it shows is a harness or checker bug.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from kvstore.consensus.types import (
    NONE,
    ConfChange,
    Config,
    ConfState,
    ConsensusError,
    Core,
    Entry,
    EntryType,
    HardState,
    LogStorage,
    Message,
    MessageType,
    NotLeaderError,
    ProposalId,
    ReadState,
    Ready,
    Role,
    Snapshot,
    Status,
)

TERM = 1
BATCH = 16


class FixedLeaderCore:
    """Nodes in ``leaders`` lead term 1 forever; the rest follow whoever appends to them."""

    def __init__(
        self,
        config: Config,
        storage: LogStorage,
        leaders: tuple[int, ...] = (1,),
        *,
        hide_extra_leaders: bool = False,
    ) -> None:
        self.id, self.group = config.id, config.group
        self.hide = hide_extra_leaders and config.id != leaders[0]
        self.storage = storage
        self.leaders = leaders
        self.dropped: Counter[str] = Counter()
        hs, cs = storage.initial_state()
        self.conf = cs
        first, last = storage.first_index(), storage.last_index()
        # The log may keep entries below the snapshot index; the view starts where it does.
        self.snap_index, self.snap_term = first - 1, storage.term(first - 1)
        self.log: list[Entry] = storage.entries(first, last + 1) if last >= first else []
        self.commit = max(hs.commit, self.snap_index)
        self.applied = max(config.applied, self.snap_index)
        self.saved = hs
        self.unstable_from = last + 1
        self.msgs: list[Message] = []
        self.pending_snapshot: Snapshot | None = None
        self.match: dict[int, int] = {}
        self.next: dict[int, int] = {}
        self.read_states: list[ReadState] = []

    # -- log view ---------------------------------------------------------------------
    def last_index(self) -> int:
        return self.snap_index + len(self.log)

    def term_at(self, index: int) -> int | None:
        if index == self.snap_index:
            return self.snap_term
        if self.snap_index < index <= self.last_index():
            return self.log[index - self.snap_index - 1].term
        return None

    def _truncate_and_append(self, entries: list[Entry]) -> None:
        for k, e in enumerate(entries):
            if e.index <= self.snap_index:
                continue
            if self.term_at(e.index) == e.term:
                continue
            del self.log[e.index - self.snap_index - 1 :]
            self.log.extend(entries[k:])
            self.unstable_from = min(self.unstable_from, e.index)
            return

    @property
    def leading(self) -> bool:
        return self.id in self.leaders

    # -- inputs -----------------------------------------------------------------------
    def tick(self) -> None:
        if not self.leading:
            return
        peers = (self.conf.voters | self.conf.learners) - {self.id}
        for p in sorted(peers):
            nxt = self.next.get(p, self.last_index() + 1)
            if nxt <= self.snap_index:
                snap = self.storage.snapshot()
                if snap.metadata.index < nxt - 1 or snap.is_empty():
                    nxt = self.snap_index + 1
                else:
                    self._send(MessageType.SNAPSHOT, p, snapshot=snap)
                    continue
            prev = nxt - 1
            ents = self.log[nxt - self.snap_index - 1 : nxt - self.snap_index - 1 + BATCH]
            self._send(
                MessageType.APPEND,
                p,
                index=prev,
                log_term=self.term_at(prev) or 0,
                entries=tuple(ents),
                commit=self.commit,
            )

    def _send(self, t: MessageType, to: int, **kw: object) -> None:
        msg = Message(type=t, group=self.group, from_=self.id, to=to, term=TERM)
        self.msgs.append(dataclasses.replace(msg, **kw))  # type: ignore[arg-type]

    def step(self, msg: Message) -> None:
        if msg.type == MessageType.APPEND:
            if msg.index < self.snap_index:
                self._send(MessageType.APPEND_RESP, msg.from_, index=self.commit)
            elif self.term_at(msg.index) != msg.log_term:
                self._send(
                    MessageType.APPEND_RESP,
                    msg.from_,
                    reject=True,
                    reject_hint=min(self.last_index(), msg.index - 1),
                )
            else:
                self._truncate_and_append(list(msg.entries))
                matched = msg.index + len(msg.entries)
                self.commit = max(self.commit, min(msg.commit, matched))
                self._send(MessageType.APPEND_RESP, msg.from_, index=matched)
        elif msg.type == MessageType.SNAPSHOT and msg.snapshot is not None:
            meta = msg.snapshot.metadata
            if meta.index > self.commit:
                self.pending_snapshot = msg.snapshot
                self.snap_index, self.snap_term = meta.index, meta.term
                self.log = []
                self.unstable_from = meta.index + 1
                self.commit = self.applied = meta.index
                self.conf = meta.conf_state
            self._send(MessageType.APPEND_RESP, msg.from_, index=self.commit)
        elif msg.type == MessageType.APPEND_RESP and self.leading:
            if msg.reject:
                self.next[msg.from_] = max(msg.reject_hint + 1, self.match.get(msg.from_, 0) + 1)
            else:
                self.match[msg.from_] = max(self.match.get(msg.from_, 0), msg.index)
                self.next[msg.from_] = self.match[msg.from_] + 1
        else:
            self.dropped["unexpected"] += 1

    def _advance_commit(self) -> None:
        if not self.leading:
            return
        stable = self.unstable_from - 1
        matches = sorted(
            (stable if v == self.id else self.match.get(v, 0) for v in self.conf.voters),
            reverse=True,
        )
        quorum = matches[len(matches) // 2]
        self.commit = max(self.commit, min(quorum, self.last_index()))

    def propose(self, data: bytes) -> ProposalId:
        if not self.leading:
            raise NotLeaderError(self.leaders[0])
        index = self.last_index() + 1
        self.log.append(Entry(term=TERM, index=index, data=data))
        return ProposalId(term=TERM, index=index)

    def propose_conf_change(self, change: ConfChange) -> ProposalId:
        raise NotImplementedError("the fake core has fixed membership")

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        return self.conf

    def read_index(self, ctx: bytes) -> None:
        # The only leader there will ever be: its commit index is linearizable as is.
        if not self.leading:
            raise NotLeaderError(self.leaders[0])
        self.read_states.append(ReadState(index=self.commit, request_ctx=ctx))

    def transfer_leadership(self, to: int) -> None:
        raise ConsensusError("the fake core's leader is fixed")

    def report_unreachable(self, peer: int) -> None:
        pass

    def report_snapshot(self, peer: int, ok: bool) -> None:
        pass

    def campaign(self) -> None:
        pass

    # -- output -----------------------------------------------------------------------
    def _hard_state(self) -> HardState:
        return HardState(term=TERM, vote=NONE, commit=self.commit)

    def has_ready(self) -> bool:
        self._advance_commit()
        return bool(
            self.msgs
            or self.pending_snapshot is not None
            or self.unstable_from <= self.last_index()
            or self._hard_state() != self.saved
            or self.applied < self.commit
            or bool(self.read_states)
        )

    def ready(self) -> Ready:
        self._advance_commit()
        hs = self._hard_state()
        lo = self.snap_index + 1
        unstable = self.log[self.unstable_from - lo :] if self.unstable_from >= lo else self.log
        committed = self.log[self.applied + 1 - lo : self.commit + 1 - lo]
        return Ready(
            hard_state=hs if hs != self.saved else None,
            entries=tuple(unstable),
            snapshot=self.pending_snapshot,
            messages=tuple(self.msgs),
            committed=tuple(committed),
            read_states=tuple(self.read_states),
        )

    def advance(self, rd: Ready) -> None:
        if rd.hard_state is not None:
            self.saved = rd.hard_state
        if rd.entries:
            self.unstable_from = rd.entries[-1].index + 1
        self.pending_snapshot = None
        del self.msgs[: len(rd.messages)]
        del self.read_states[: len(rd.read_states)]
        if rd.committed:
            self.applied = rd.committed[-1].index

    def status(self, *, progress: bool = False) -> Status:
        return Status(
            id=self.id,
            group=self.group,
            role=Role.LEADER if self.leading and not self.hide else Role.FOLLOWER,
            term=TERM,
            leader=self.leaders[0],
            commit=self.commit,
            applied=self.applied,
            last_index=self.last_index(),
            conf_state=self.conf,
        )


class Wrapper:
    """Delegates everything to ``inner``; subclasses break one rule on purpose."""

    def __init__(self, inner: Core) -> None:
        self.inner = inner
        self.dropped = inner.dropped

    def tick(self) -> None:
        self.inner.tick()

    def step(self, msg: Message) -> None:
        self.inner.step(msg)

    def propose(self, data: bytes) -> ProposalId:
        return self.inner.propose(data)

    def propose_conf_change(self, change: ConfChange) -> ProposalId:
        return self.inner.propose_conf_change(change)

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        return self.inner.apply_conf_change(change)

    def read_index(self, ctx: bytes) -> None:
        self.inner.read_index(ctx)

    def transfer_leadership(self, to: int) -> None:
        self.inner.transfer_leadership(to)

    def report_unreachable(self, peer: int) -> None:
        self.inner.report_unreachable(peer)

    def report_snapshot(self, peer: int, ok: bool) -> None:
        self.inner.report_snapshot(peer, ok)

    def campaign(self) -> None:
        self.inner.campaign()

    def has_ready(self) -> bool:
        return self.inner.has_ready()

    def ready(self) -> Ready:
        return self.inner.ready()

    def advance(self, rd: Ready) -> None:
        self.inner.advance(rd)

    def status(self, *, progress: bool = False) -> Status:
        return self.inner.status(progress=progress)


class CorruptApply(Wrapper):
    """Node 2 hands the state machine a different value than the one committed."""

    def __init__(self, inner: Core, node_id: int) -> None:
        super().__init__(inner)
        self.node_id = node_id
        self._real: Ready | None = None

    def ready(self) -> Ready:
        rd = self.inner.ready()
        self._real = rd
        if self.node_id != 2:
            return rd
        bad = tuple(
            dataclasses.replace(e, data=e.data + b"!") if e.type == EntryType.NORMAL else e
            for e in rd.committed
        )
        return dataclasses.replace(rd, committed=bad)

    def advance(self, rd: Ready) -> None:
        assert self._real is not None
        self.inner.advance(self._real)


class ForgetVote(Wrapper):
    """Persists its term and commit but never its vote: after a restart it may vote
    again in the same term, so two candidates can both win it."""

    def __init__(self, inner: Core) -> None:
        super().__init__(inner)
        self._real: Ready | None = None

    def ready(self) -> Ready:
        rd = self.inner.ready()
        self._real = rd
        if rd.hard_state is None:
            return rd
        return dataclasses.replace(rd, hard_state=dataclasses.replace(rd.hard_state, vote=NONE))

    def advance(self, rd: Ready) -> None:
        assert self._real is not None
        self.inner.advance(self._real)


class ApplyUncommitted(Wrapper):
    """Hands new log entries to the state machine as soon as they are appended."""

    def __init__(self, inner: Core) -> None:
        super().__init__(inner)
        self._real: Ready | None = None
        self._early = 0

    def ready(self) -> Ready:
        rd = self.inner.ready()
        self._real = rd
        ents = tuple(e for e in (*rd.committed, *rd.entries) if e.index > self._early)
        if ents:
            self._early = ents[-1].index
        return dataclasses.replace(rd, committed=ents)

    def advance(self, rd: Ready) -> None:
        assert self._real is not None
        self.inner.advance(self._real)


def register() -> None:
    """Make the fakes loadable by name in the simulator (tests only)."""
    from .checkers import RAFT_TRAITS
    from .cluster import CORE_MODULES, EXTRA_FACTORIES, load_core

    def split(c: Config, s: LogStorage) -> Core:
        return FixedLeaderCore(c, s, leaders=(1, 2))

    def hidden_split(c: Config, s: LogStorage) -> Core:
        return FixedLeaderCore(c, s, leaders=(1, 2), hide_extra_leaders=True)

    def corrupt(c: Config, s: LogStorage) -> Core:
        return CorruptApply(FixedLeaderCore(c, s), c.id)

    def early(c: Config, s: LogStorage) -> Core:
        return ApplyUncommitted(FixedLeaderCore(c, s))

    EXTRA_FACTORIES.update(
        {
            "fake": (FixedLeaderCore, RAFT_TRAITS),
            "fake-split-brain": (split, RAFT_TRAITS),
            "fake-hidden-split-brain": (hidden_split, RAFT_TRAITS),
            "fake-corrupt-apply": (corrupt, RAFT_TRAITS),
            "fake-apply-uncommitted": (early, RAFT_TRAITS),
        }
    )
    for kind, (_, _, traits) in CORE_MODULES.items():

        def forget(c: Config, s: LogStorage, kind: str = kind) -> Core:
            loaded = load_core(kind)
            assert loaded is not None
            return ForgetVote(loaded[0](c, s))

        def corrupt_real(c: Config, s: LogStorage, kind: str = kind) -> Core:
            loaded = load_core(kind)
            assert loaded is not None
            return CorruptApply(loaded[0](c, s), c.id)

        EXTRA_FACTORIES[f"{kind}-forget-vote"] = (forget, traits)
        EXTRA_FACTORIES[f"{kind}-corrupt-apply"] = (corrupt_real, traits)
