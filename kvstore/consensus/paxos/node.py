"""PaxosNode: Multi-Paxos behind the shared ``Core`` contract. Performs no I/O.

One node is acceptor, learner and (when it leads) the distinguished proposer of
one consensus group. Inputs are ``tick``/``step``/``propose``/...; effects come
out of ``ready()`` (persist ``hard_state``/``snapshot``/``entries`` first, then
send ``messages``), acknowledged by ``advance``. See the package docstring for
the message flow and the rules. This module holds the acceptor side and the
Ready loop; a candidate's phase 1 is in ``preparing.py``, the leader's phase 2,
heartbeats and reads in ``leading.py``, validation of remote messages in
``checks.py``, the acceptor's rules in ``acceptor.py``.

Invariant of the Ready rule: every message that answers a PREPARE, ACCEPT or
snapshot is built after the promise and accepted values it depends on were put
into the pending hard state / unstable log, so it leaves in the same Ready,
after they are durable. Committed entries handed out never exceed the commit
index persisted in the same Ready.
"""

from __future__ import annotations

from collections import Counter

from kvstore.consensus.paxos import ballot as ballots
from kvstore.consensus.paxos import checks, leading, membership, preparing, value
from kvstore.consensus.paxos.acceptor import Acceptor, Outcome
from kvstore.consensus.paxos.leading import COMMIT_ONLY, REACCEPT
from kvstore.consensus.paxos.log import SlotLog
from kvstore.consensus.paxos.preparing import TRANSFER
from kvstore.consensus.paxos.progress import Progress, peer_progress
from kvstore.consensus.paxos.proposer import Candidate, Leader
from kvstore.consensus.types import (
    JOINING,
    NONE,
    SINGLE_CHANGES,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    ConsensusError,
    Entry,
    EntryType,
    HardState,
    LogStorage,
    Message,
    MessageType,
    NotLeaderError,
    ProposalDroppedError,
    ProposalId,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SoftState,
    Status,
    has_membership,
)

MAX_COMMITTED_BYTES = 16 << 20
"""Committed entries handed out per Ready (at least one)."""

MT = MessageType


class PaxosNode:
    def __init__(self, config: Config, storage: LogStorage) -> None:
        ballots.make(0, config.id)  # rejects ids a ballot cannot encode
        self.id = config.id
        self.group = config.group
        self.cfg = config
        self.rng = config.rng
        self.dropped: Counter[str] = Counter()
        hs, cs = storage.initial_state()
        self.storage = storage
        self.log = SlotLog(storage)
        self.acceptor = Acceptor(self.log, hs.term, hs.commit)
        self.conf: ConfState = cs
        self.applied = max(config.applied, self.log.snapshot_index())
        if self.applied > self.acceptor.commit:
            # Applied slots were chosen; never hand them out again.
            self.acceptor.commit = self.acceptor.accepted_through = self.applied
        self.emitted = self.applied
        """Committed entries handed out in a Ready through this slot."""
        self.pending_conf: dict[int, ConfChange] = {}
        self._note_written(self.log.slice(self.applied + 1, self.log.last_index() + 1))
        self.max_seen = hs.term
        self.leader = NONE
        self.candidate: Candidate | None = None
        self.lead: Leader | None = None
        self.elapsed = 0
        self.lost_through = 0
        """A leader's heartbeat showed we lost accepted values up to here (a wiped disk,
        or one restored from an older copy): no promise until the log holds them again."""
        self.timeout = self._random_timeout()
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.prev_hs = hs
        self.prev_soft = SoftState(leader=NONE, role=self._follower_role())
        self._dirty = False

    # -- Core: inputs ---------------------------------------------------------
    def tick(self) -> None:
        if self.lead is not None:
            leading.tick_leader(self, self.lead)
            return
        self.elapsed += 1
        if self.elapsed >= self.timeout and self._is_voter():
            preparing.campaign(self, transfer=False)

    def step(self, msg: Message) -> None:
        reason = checks.envelope(msg, self.group, self.id)
        if reason is None:
            handler = self._handlers.get(msg.type)
            if handler is None:
                reason = "unexpected_type"
            else:
                reason = checks.body(msg, self.id)
                if reason is None:
                    reason = handler(self, msg)
        if reason is not None:
            self.dropped[reason] += 1

    def propose(self, data: bytes) -> ProposalId:
        return leading.propose(self, data, EntryType.NORMAL)

    def propose_conf_change(self, change: ConfChange) -> ProposalId:
        if change.type not in SINGLE_CHANGES:
            raise ConsensusError(
                "Multi-Paxos changes one member at a time: joint consensus "
                f"({change.type.name}) is supported by --consensus raft only"
            )
        lead = self._require_leader()
        if (
            change.type is ConfChangeType.ADD_LEARNER
            and change.node_id in self._latest_conf().voters
        ):
            raise ConsensusError(
                f"Multi-Paxos cannot demote voter {change.node_id} to a learner; remove it instead"
            )
        if any(i > self.applied for i in self.pending_conf):
            raise ProposalDroppedError("a conf change is already pending")
        after = membership.apply_change(self._latest_conf(), change)
        if not after.voters:
            raise ProposalDroppedError("the change would leave no voters")
        pid = leading.propose(self, change.encode(), EntryType.CONF_CHANGE)
        self.pending_conf[pid.index] = change
        for n in after.voters | after.learners:
            if n != self.id and n not in lead.progress:
                lead.progress[n] = Progress(match=0, next=self.acceptor.commit + 1)
        return pid

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        self.conf = membership.apply_change(self.conf, change)
        self._sync_members()
        if self.lead is not None and self.id not in self._all_voters():
            self._become_follower()
        elif self.lead is not None:
            leading.maybe_commit(self, self.lead)
        return self.conf

    def report_unreachable(self, peer: int) -> None:
        """Transport feedback (types.Core); not used: the leader probes on heartbeats."""

    def report_snapshot(self, peer: int, ok: bool) -> None:
        """Transport feedback (types.Core); not used: the leader resends a snapshot left
        unanswered for an election timeout."""

    def read_index(self, ctx: bytes) -> None:
        if self.lead is not None:
            leading.read(self, self.lead, ctx, self.id)
        elif self.leader != NONE and self.candidate is None:
            self._send(MT.READ_INDEX, self.leader, context=ctx)
        else:
            raise NotLeaderError(self.leader)

    def transfer_leadership(self, to: int) -> None:
        lead = self._require_leader()
        if to == self.id:
            lead.transfer_to = 0
            return
        if to not in self._all_voters():
            raise ConsensusError(f"cannot transfer leadership to {to}: not a voter")
        lead.transfer_to = to
        lead.transfer_elapsed = 0
        lead.transfer_sent = False
        leading.maybe_timeout_now(self, lead)
        leading.replicate(self, lead, to)

    def campaign(self) -> None:
        if not self._is_voter():
            raise ConsensusError(f"node {self.id} is not a voter")
        preparing.campaign(self, transfer=False)

    # -- Core: outputs ----------------------------------------------------------
    def has_ready(self) -> bool:
        """Pure: asking changes nothing (the leader's batched sends are built in ready())."""
        return bool(
            leading.has_sends(self)
            or self.msgs
            or self.read_states
            or self.log.unstable
            or self.log.pending_snapshot is not None
            or self._hard_state() != self.prev_hs
            or self._soft_state() != self.prev_soft
            or self.acceptor.commit > self.emitted
        )

    def ready(self) -> Ready:
        # The leader's sends are built here, not at each proposal or answer: every
        # proposal since the last Ready goes out in one ACCEPT per acceptor.
        leading.flush(self)
        hs = self._hard_state()
        soft = self._soft_state()
        committed = self._committed()
        rd = Ready(
            soft_state=soft if soft != self.prev_soft else None,
            hard_state=hs if hs != self.prev_hs else None,
            entries=tuple(self.log.unstable),
            snapshot=self.log.pending_snapshot,
            messages=tuple(self.msgs),
            committed=committed,
            read_states=tuple(self.read_states),
        )
        self.prev_hs, self.prev_soft = hs, soft
        self.msgs, self.read_states = [], []
        if committed:
            self.emitted = committed[-1].index
        return rd

    def advance(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.log.snapshot_stable(rd.snapshot)
            self.applied = max(self.applied, rd.snapshot.metadata.index)
        if self.log.pending_snapshot is None:
            self.log.stable_to(rd.entries)
        if rd.committed:
            self.applied = max(self.applied, rd.committed[-1].index)
        for i in [i for i in self.pending_conf if i <= self.applied]:
            del self.pending_conf[i]
        if self.lead is not None:
            self.lead.self_match = self.log.stable_last()
            leading.maybe_commit(self, self.lead)

    def status(self, *, progress: bool = False) -> Status:
        return Status(
            id=self.id,
            group=self.group,
            role=self._role(),
            term=self.acceptor.promised,
            leader=self.leader,
            commit=self.acceptor.commit,
            applied=self.applied,
            last_index=self.log.last_index(),
            conf_state=self.conf,
            progress=(
                peer_progress(self.lead.progress, self.id, self.log.last_index(), self.conf)
                if progress and self.lead is not None
                else ()
            ),
        )

    # -- roles ------------------------------------------------------------------
    def _role(self) -> Role:
        if self.lead is not None:
            return Role.LEADER
        if self.candidate is not None:
            return Role.CANDIDATE
        return self._follower_role()

    def _follower_role(self) -> Role:
        return Role.LEARNER if self.id in self.conf.learners else Role.FOLLOWER

    def _soft_state(self) -> SoftState:
        return SoftState(leader=self.leader, role=self._role())

    def _hard_state(self) -> HardState:
        return HardState(term=self.acceptor.promised, vote=NONE, commit=self.acceptor.commit)

    def _random_timeout(self) -> int:
        n = self.cfg.election_tick
        return n + self.rng.randrange(n)

    def _become_follower(self, leader: int = NONE) -> None:
        self.lead = None
        self.candidate = None
        self.leader = leader
        self.elapsed = 0
        self.timeout = self._random_timeout()

    def _observe(self, b: int, sender_leads: bool) -> None:
        """We promised ``b`` (>= any ballot we ran): follow its owner if it leads."""
        self.max_seen = max(self.max_seen, b)
        mine = self.lead.ballot if self.lead else self.candidate.ballot if self.candidate else 0
        if mine and b > mine:
            self._become_follower()
        if sender_leads and self.lead is None:
            self.leader = ballots.node_of(b)
            self.candidate = None
            self.elapsed = 0

    def _preempted(self, b: int, by: int) -> None:
        """Acceptor ``by`` answered with a higher promise ``b`` than our ballot.

        A candidate backs off. A leader under leases (check_quorum) runs phase 1 again
        above ``b`` at once: acceptors that follow it still answer it, so a node that
        campaigned alone behind a partition rejoins without costing an election
        timeout; if a rival really holds a quorum, the leases keep this from
        succeeding and check_quorum retires us. During a transfer to ``by`` we yield."""
        self.max_seen = max(self.max_seen, b)
        lead = self.lead
        if lead is not None and self.cfg.check_quorum and lead.transfer_to != by:
            preparing.campaign(self, transfer=False)
            return
        self._become_follower()

    def _require_leader(self) -> Leader:
        if self.lead is None:
            raise NotLeaderError(self.leader)
        return self.lead

    # -- membership -------------------------------------------------------------
    def _pending_changes(self, before: int | None = None) -> list[ConfChange]:
        return [
            cc
            for i, cc in sorted(self.pending_conf.items())
            if i > self.applied and (before is None or i < before)
        ]

    def _configs(self) -> list[frozenset[int]]:
        return membership.chain(self.conf, self._pending_changes())

    def _all_voters(self) -> frozenset[int]:
        return frozenset().union(*self._configs())

    def _latest_conf(self) -> ConfState:
        cs = self.conf
        for cc in self._pending_changes():
            cs = membership.apply_change(cs, cc)
        return cs

    def _is_voter(self) -> bool:
        """May campaign: a voter of the APPLIED configuration, as in Raft. A voter only
        of a pending change (one in its log, maybe never chosen) would campaign for a
        quorum it can never reach, and the acceptors that share that log entry would
        keep promising it ever higher ballots, turning away every real candidate. A
        joiner has no applied configuration at all (the join contract in types.py)."""
        return self.id in self.conf.voters

    def _joining(self) -> bool:
        """No membership yet (started with --join): see the join contract in types.py."""
        return not has_membership(self.conf)

    def _note_written(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        pending = self.pending_conf
        for e in entries:
            if e.type is EntryType.CONF_CHANGE:
                cc = membership.decode(e)
                if cc is not None:
                    pending[e.index] = cc
                    continue
            if pending:
                pending.pop(e.index, None)

    def _sync_members(self) -> None:
        lead = self.lead
        if lead is None:
            return
        want = membership.members(self.conf, self._pending_changes()) - {self.id}
        for n in want - lead.progress.keys():
            lead.progress[n] = Progress(match=0, next=self.acceptor.commit + 1)
        for n in lead.progress.keys() - want:
            del lead.progress[n]

    # -- phase 1 (acceptor side; the candidate's side is in preparing.py) ---------
    def _on_prepare(self, m: Message) -> str | None:
        if m.from_ not in self._all_voters() and not self._joining():
            return "not_voter"  # a joiner cannot tell; its promise is truthful anyway
        if (
            self.cfg.check_quorum
            and m.context != TRANSFER
            and self.leader not in (NONE, m.from_)
            and (self.lead is not None or self.elapsed < self.cfg.election_tick)
        ):
            return "leader_lease"
        if self.log.last_index() < self.lost_through:
            # Values we accepted may be chosen and held by the leader alone: a promise now
            # could let a leader that lacks them fill their slots with others.
            return "prepare_lost_log"
        before = self.acceptor.promised
        if not self.acceptor.promise(m.term):
            self._send(MT.PROMISE, m.from_, term=self.acceptor.promised, index=m.index, reject=True)
            return None
        self._observe(m.term, sender_leads=False)
        if m.term > before:
            self.leader = NONE
        self.elapsed = 0
        if self.log.first_index() > m.index and self.acceptor.commit >= m.index:
            snap = self._snapshot()
            self._send(MT.PAXOS_SNAPSHOT, m.from_, term=m.term, snapshot=snap)
        p = self.acceptor.report(m.index)
        self._send(
            MT.PROMISE, m.from_, term=m.term, index=m.index, entries=p.entries, commit=p.commit
        )
        return None

    # -- phase 2 (acceptor side) ------------------------------------------------
    def _on_accept(self, m: Message) -> str | None:
        if self._joining():
            # The join contract: no values before a snapshot brings our membership.
            self._send(MT.ACCEPTED, m.from_, term=m.term, index=0, reject=True, context=JOINING)
            return None
        if m.context == REACCEPT:
            outcome = self.acceptor.reaccept(m.term, m.index, m.log_term)
        else:
            outcome = self.acceptor.accept(m.term, m.index, m.entries)
        if outcome is Outcome.STALE_BALLOT:
            promised = self.acceptor.promised
            self._send(MT.ACCEPTED, m.from_, term=promised, index=m.index, reject=True)
            return None
        self._observe(m.term, sender_leads=True)
        if outcome is Outcome.GAP:
            self._send(
                MT.ACCEPTED,
                m.from_,
                term=m.term,
                index=m.index,
                reject=True,
                reject_hint=self.acceptor.accepted_through,
            )
            return None
        self._note_written(m.entries)
        self.acceptor.learn(m.commit)
        if m.context != COMMIT_ONLY or m.entries:
            self._send(MT.ACCEPTED, m.from_, term=m.term, index=self.acceptor.accepted_through)
        return None

    def _on_heartbeat(self, m: Message) -> str | None:
        if not self.acceptor.promise(m.term):
            self._send(MT.PAXOS_HEARTBEAT_RESP, m.from_, term=self.acceptor.promised, reject=True)
            return None
        self._observe(m.term, sender_leads=True)
        if m.commit > self.log.last_index():
            # The leader sends a commit up to what we acknowledged in its ballot, and no
            # acknowledged value leaves our log while we hold that promise: we lost them.
            self.lost_through = max(self.lost_through, m.commit)
            self.dropped["commit_past_log"] += 1
        self.acceptor.learn(m.commit)
        self._send(
            MT.PAXOS_HEARTBEAT_RESP,
            m.from_,
            term=m.term,
            index=self.acceptor.accepted_through,
            context=m.context,
        )
        return None

    def _on_snapshot(self, m: Message) -> str | None:
        snap = m.snapshot
        assert snap is not None  # checks.body guarantees it
        cand = self.candidate
        if cand is not None and m.term == cand.ballot:
            # A promiser's chosen prefix we lack: install it and ask again from there.
            if self._install(snap):
                preparing.campaign_again(self, cand)
            return None
        if ballots.node_of(m.term) != m.from_:
            return "stale_ballot"  # a promiser's catch-up for a phase 1 we gave up
        if not self.acceptor.promise(m.term):
            self._send(MT.ACCEPTED, m.from_, term=self.acceptor.promised, index=0, reject=True)
            return None
        self._observe(m.term, sender_leads=True)
        self._install(snap)
        self._send(MT.ACCEPTED, m.from_, term=m.term, index=self.acceptor.accepted_through)
        return None

    def _install(self, snap: Snapshot) -> bool:
        s = snap.metadata.index
        if not self.acceptor.install(snap):
            if not self._joining() or not has_membership(snap.metadata.conf_state):
                return False
            # The join contract: adopt the membership even from a snapshot we need no
            # data from (index 0, the genesis membership). A fresh log hands it to the
            # driver too, which records the membership as its base.
            if s == 0 and self.log.last_index() == 0:
                self.log.restore(snap)
        self.conf = snap.metadata.conf_state
        for i in [i for i in self.pending_conf if i <= s]:
            del self.pending_conf[i]
        self.emitted = max(self.emitted, s)
        return True

    # -- helpers --------------------------------------------------------------------
    def _snapshot(self) -> Snapshot:
        return self.log.pending_snapshot or self.storage.snapshot()

    def _committed(self) -> tuple[Entry, ...]:
        hi = self.acceptor.commit
        if hi <= self.emitted:
            return ()
        ents = self.log.slice(
            self.emitted + 1, hi + 1, max(self.cfg.max_size_per_msg, MAX_COMMITTED_BYTES)
        )
        return tuple(value.chosen(e) for e in ents)

    def _send(self, type_: MessageType, to: int, **fields: object) -> None:
        self.msgs.append(
            Message(type=type_, group=self.group, from_=self.id, to=to, **fields)  # type: ignore[arg-type]
        )

    _handlers = {
        MT.PREPARE: _on_prepare,
        MT.PROMISE: preparing.on_promise,
        MT.ACCEPT: _on_accept,
        MT.ACCEPTED: leading.on_accepted,
        MT.PAXOS_HEARTBEAT: _on_heartbeat,
        MT.PAXOS_HEARTBEAT_RESP: leading.on_heartbeat_resp,
        MT.PAXOS_SNAPSHOT: _on_snapshot,
        MT.PAXOS_TIMEOUT_NOW: preparing.on_timeout_now,
        MT.READ_INDEX: leading.on_read_index,
        MT.READ_INDEX_RESP: leading.on_read_index_resp,
    }
