"""The Raft state machine: roles, terms, follower handling and the Core API.

Performs no I/O: it reads the stable log through ``LogStorage``, queues outgoing
messages in ``msgs`` and read confirmations in ``read_states``; ``RawNode`` turns
those into a ``Ready``. Time is ``tick()``; randomness is ``config.rng``. Campaigns
and votes live in election.py, a leader's replication and reads in leader.py.

Rules kept (Raft paper / thesis section numbers):
- At most one vote per term (5.2); a vote only for an up-to-date log (5.4.1).
- A leader commits only entries of its own term by counting replicas (5.4.2);
  its own replica counts only once ``advance`` reports the entries durable.
- A message from a lower term is dropped (answered, when that helps the stale
  sender step down); a higher term turns us into a follower, except PreVote
  traffic (9.6) and votes ignored under a live leader's lease (CheckQuorum, 6.2).
- Remote junk is dropped and counted in ``dropped``; exceptions mean local misuse.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Callable

from kvstore.consensus.raft import confchange, election, leader
from kvstore.consensus.raft.log import RaftLog
from kvstore.consensus.raft.progress import ProgressState
from kvstore.consensus.raft.read_only import ReadOnly
from kvstore.consensus.raft.tracker import ProgressTracker
from kvstore.consensus.types import (
    NONE,
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
    Role,
    Snapshot,
    SoftState,
)

MT = MessageType
MAX_COMMITTED_BYTES_PER_READY = 8 << 20

RAFT_TYPES = frozenset(
    {
        MT.APPEND,
        MT.APPEND_RESP,
        MT.VOTE,
        MT.VOTE_RESP,
        MT.PRE_VOTE,
        MT.PRE_VOTE_RESP,
        MT.HEARTBEAT,
        MT.HEARTBEAT_RESP,
        MT.SNAPSHOT,
        MT.TIMEOUT_NOW,
        MT.READ_INDEX,
        MT.READ_INDEX_RESP,
    }
)
RESPONSES = frozenset({MT.APPEND_RESP, MT.HEARTBEAT_RESP, MT.READ_INDEX})
"""Messages only a member can meaningfully send; from anyone else they are dropped.
Requests (APPEND, VOTE ...) are accepted from unknown senders: a member that has not
yet applied a conf change must still follow a leader the change added."""
# The same two sets as lists indexed by type value: Enum hashing is slow in the hot path.
_IS_RAFT = [any(t.value == i for t in RAFT_TYPES) for i in range(max(MT) + 1)]
_IS_RESPONSE = [any(t.value == i for t in RESPONSES) for i in range(max(MT) + 1)]


class Raft:
    def __init__(self, config: Config, storage: LogStorage) -> None:
        if config.id <= 0:
            raise ConsensusError(f"node id must be >= 1, got {config.id}")
        if config.heartbeat_tick <= 0 or config.election_tick <= config.heartbeat_tick:
            raise ConsensusError("need 0 < heartbeat_tick < election_tick")
        if config.max_inflight_msgs <= 0 or config.max_inflight_bytes <= 0:
            raise ConsensusError("in-flight caps must be positive")
        self.id = config.id
        self.group = config.group
        self.election_tick = config.election_tick
        self.heartbeat_tick = config.heartbeat_tick
        self.pre_vote = config.pre_vote
        self.check_quorum = config.check_quorum
        self.max_size_per_msg = config.max_size_per_msg
        self.max_uncommitted_bytes = config.max_uncommitted_bytes
        self.rng = config.rng
        self.log = RaftLog(storage, MAX_COMMITTED_BYTES_PER_READY)
        self.tracker = ProgressTracker(config.max_inflight_msgs, config.max_inflight_bytes)
        self.dropped: Counter[str] = Counter()
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_tick
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.read_only = ReadOnly()
        self.pending_reads: list[tuple[int, bytes]] = []
        self.lost_through = 0
        """A leader's heartbeat showed we lost acknowledged entries up to here (see
        _handle_heartbeat): no vote until our log holds them again."""
        self._step: Callable[[Message], None] = self._step_follower

        hs, cs = storage.initial_state()
        self.tracker.set_conf(cs, self.log.last_index() + 1)
        if hs != HardState():
            if not self.log.committed <= hs.commit <= self.log.last_index():
                raise ConsensusError(
                    f"hard state commit {hs.commit} outside the stored log "
                    f"[{self.log.committed}, {self.log.last_index()}]"
                )
            self.log.committed = hs.commit
            self.term, self.vote = hs.term, hs.vote
        if config.applied:
            if config.applied > self.log.committed:
                raise ConsensusError(f"applied {config.applied} > commit {self.log.committed}")
            self.log.applied_to(config.applied)
        self.become_follower(self.term, NONE)

    # -- state snapshots for Ready -----------------------------------------------------
    def soft_state(self) -> SoftState:
        return SoftState(leader=self.lead, role=self.visible_role())

    def hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def visible_role(self) -> Role:
        if self.role is Role.FOLLOWER and self.id in self.tracker.learners:
            return Role.LEARNER
        return self.role

    # -- sending -----------------------------------------------------------------------
    def _send(
        self,
        type: MessageType,
        to: int,
        *,
        term: int | None = None,
        index: int = 0,
        log_term: int = 0,
        entries: tuple[Entry, ...] = (),
        commit: int = 0,
        reject: bool = False,
        reject_hint: int = 0,
        snapshot: Snapshot | None = None,
        context: bytes = b"",
    ) -> None:
        self.msgs.append(
            Message(
                type=type,
                group=self.group,
                from_=self.id,
                to=to,
                term=self.term if term is None else term,
                log_term=log_term,
                index=index,
                entries=entries,
                commit=commit,
                reject=reject,
                reject_hint=reject_hint,
                snapshot=snapshot,
                context=context,
            )
        )

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    # -- role changes --------------------------------------------------------------------
    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_tick + self.rng.randrange(
            self.election_tick
        )
        self.lead_transferee = NONE
        self.tracker.reset_votes()
        self.tracker.reset_progress(self.log.last_index() + 1, self.id, self.log.stable_last())
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.read_only = ReadOnly()
        self.pending_reads = []

    def become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER
        self._step = self._step_follower

    def _become_pre_candidate(self) -> None:
        # PreVote (thesis 9.6) changes neither term nor vote: a partitioned node that
        # keeps losing pre-elections cannot inflate its term and disrupt the cluster.
        self.tracker.reset_votes()
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE
        self._step = functools.partial(election.step_candidate, self)

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE
        self._step = functools.partial(election.step_candidate, self)

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        self._step = functools.partial(leader.step_leader, self)
        # No conf change until this term's no-op is applied, hence committed: the fix
        # for single-server changes across leader changes.
        self.pending_conf_index = self.log.last_index() + 1
        leader.append(self, [Entry(term=self.term, index=0, type=EntryType.NOOP)])

    def promotable(self) -> bool:
        return self.tracker.is_voter(self.id) and self.log.unstable.snapshot is None

    # -- ticks -----------------------------------------------------------------------------
    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self.election_elapsed += 1
            if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
                self.election_elapsed = 0
                election.hup(self, transfer=False)

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_tick:
            self.election_elapsed = 0
            if self.check_quorum:
                if not self.tracker.quorum_active(self.id):
                    self.become_follower(self.term, NONE)
                    return
                for node, pr in self.tracker.progress.items():
                    pr.recent_active = node == self.id
            self.lead_transferee = NONE
            for node, pr in self.tracker.progress.items():
                if pr.state is ProgressState.SNAPSHOT:
                    pr.snapshot_checks += 1
                    if pr.snapshot_checks >= 2:  # lost or ignored: probe again
                        pr.snapshot_failed()
                        leader.send_append(self, node)
        if self.heartbeat_elapsed >= self.heartbeat_tick:
            self.heartbeat_elapsed = 0
            # Retry the newest pending read's round: its own round may have been lost.
            leader.bcast_heartbeat(self, self.read_only.last_pending_ctx())
            self._maybe_leave_joint()

    def hup(self, *, transfer: bool) -> None:
        """Start an election (a PreVote first unless ``transfer``), if we may."""
        election.hup(self, transfer=transfer)

    # -- step ---------------------------------------------------------------------------
    def step(self, m: Message) -> None:
        reason = self._malformed(m)
        if reason:
            self.drop(reason)
            return
        if m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE) and election.ignores_in_lease(self, m):
                self.drop("vote_in_lease")
                return
            if m.type is MT.PRE_VOTE or (m.type is MT.PRE_VOTE_RESP and not m.reject):
                pass  # a pre-vote never changes terms; a granted one carries a future term
            elif m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
                self.become_follower(m.term, m.from_)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            self.drop("stale_term")
            if (self.check_quorum or self.pre_vote) and m.type in (MT.APPEND, MT.HEARTBEAT):
                # The sender may be a leader cut off by a partition that never saw our
                # term (PreVote kept us from bumping theirs): tell it, so it steps down.
                self._send(MT.APPEND_RESP, m.from_)
            elif m.type is MT.PRE_VOTE:
                self._send(MT.PRE_VOTE_RESP, m.from_, reject=True)
            return
        if m.type in (MT.VOTE, MT.PRE_VOTE):
            election.handle_vote(self, m)
        else:
            self._step(m)

    def _malformed(self, m: Message) -> str:
        if m.group != self.group:
            return "wrong_group"
        if not _IS_RAFT[m.type]:
            return "unknown_type"
        if m.to != self.id:
            return "misrouted"
        if m.from_ <= 0 or m.from_ == self.id:
            return "bad_sender"
        if min(m.term, m.index, m.log_term, m.commit, m.reject_hint) < 0:
            return "malformed"
        if _IS_RESPONSE[m.type] and m.from_ not in self.tracker.progress:
            return "unknown_node"
        if m.entries:
            prev_term, expect = m.log_term, m.index + 1
            for e in m.entries:
                if e.index != expect or e.term < prev_term or e.term > m.term:
                    return "malformed"
                prev_term, expect = e.term, expect + 1
        if m.type is MT.SNAPSHOT and m.snapshot is None:
            return "malformed"
        return ""

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
            self.election_elapsed = 0
            self.lead = m.from_
            if t is MT.APPEND:
                self._handle_append(m)
            elif t is MT.HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif t is MT.TIMEOUT_NOW:
            if self.promotable():
                election.hup(self, transfer=True)
            else:
                self.drop("timeout_now_not_promotable")
        elif t is MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(index=m.index, request_ctx=m.context))
        elif t is MT.READ_INDEX:
            self.drop("not_leader")
        else:
            self.drop("unexpected_" + t.name.lower())

    # -- follower handlers -------------------------------------------------------------
    def _handle_append(self, m: Message) -> None:
        if not self.tracker.members():
            # We joined with no membership: entries replayed onto an empty base
            # config would give us a wrong one. Ask for a snapshot (see leader.py).
            self._send(MT.APPEND_RESP, m.from_, index=0, reject=True)
            return
        if m.index < self.log.committed:
            self._send(MT.APPEND_RESP, m.from_, index=self.log.committed)
            return
        try:
            last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        except ConsensusError:
            self.drop("conflict_below_commit")
            return
        if last_new is not None:
            self._send(MT.APPEND_RESP, m.from_, index=last_new)
            return
        hint, hint_term = self.log.find_conflict_by_term(
            min(m.index, self.log.last_index()), m.log_term
        )
        self._send(
            MT.APPEND_RESP,
            m.from_,
            index=m.index,
            reject=True,
            reject_hint=hint,
            log_term=hint_term,
        )

    def _handle_heartbeat(self, m: Message) -> None:
        last = self.log.last_index()
        if m.commit > last:
            # A leader sends a commit index up to what we acknowledged, and acknowledged
            # entries never leave our log: we lost them (a wiped disk, or one restored
            # from an older copy). Say where our log ends; the leader believes we hold
            # up to that commit and would otherwise never send us anything below it.
            self.drop("commit_past_log")
            self.lost_through = max(self.lost_through, m.commit)
            self._send(MT.HEARTBEAT_RESP, m.from_, context=m.context, reject=True, reject_hint=last)
            return
        self.log.commit_to(m.commit)
        self._send(MT.HEARTBEAT_RESP, m.from_, context=m.context)

    def _handle_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None  # checked by _malformed
        if self.restore(m.snapshot):
            self._send(MT.APPEND_RESP, m.from_, index=self.log.last_index())
        else:
            self._send(MT.APPEND_RESP, m.from_, index=self.log.committed)

    def restore(self, snap: Snapshot) -> bool:
        meta = snap.metadata
        if not self.tracker.members():
            pass  # joining: adopt the snapshot and its membership, even at index 0
        elif meta.index <= self.log.committed:
            return False
        elif self.log.match_term(meta.index, meta.term):
            # We have the snapshot's last entry: just commit up to it, keep the log.
            self.log.commit_to(meta.index)
            return False
        self.log.restore(snap)
        self.tracker.set_conf(meta.conf_state, self.log.last_index() + 1)
        return True

    # -- local requests (the Core API) -----------------------------------------------------
    def _require_leader(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.lead)

    def propose(self, data: bytes, type: EntryType = EntryType.NORMAL) -> ProposalId:
        self._require_leader()
        if self.lead_transferee != NONE:
            raise ProposalDroppedError(f"leadership transfer to {self.lead_transferee} in flight")
        index = leader.append(self, [Entry(term=self.term, index=0, type=type, data=data)])
        leader.bcast_append(self)
        return ProposalId(term=self.term, index=index)

    def propose_conf_change(self, change: ConfChange) -> ProposalId:
        self._require_leader()
        if self.pending_conf_index > self.log.applied:
            raise ProposalDroppedError(
                f"conf change pending until index {self.pending_conf_index} is applied"
            )
        confchange.validate(self.tracker.conf_state(), change)
        pid = self.propose(change.encode(), EntryType.CONF_CHANGE)
        self.pending_conf_index = pid.index
        return pid

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        cs = confchange.apply(self.tracker.conf_state(), change)
        added = self.tracker.set_conf(cs, self.log.last_index() + 1)
        if self.role is not Role.LEADER:
            return cs
        if not self.tracker.is_voter(self.id):
            # Removed (or never a voter): hand over by stepping down; the remaining
            # voters elect a leader after an election timeout.
            self.become_follower(self.term, NONE)
            return cs
        if self.lead_transferee != NONE and not self.tracker.is_voter(self.lead_transferee):
            self.lead_transferee = NONE
        if leader.maybe_commit(self):
            leader.bcast_append(self)
        else:
            for node in self.tracker.progress:
                if node != self.id:
                    # Probe new members at once; others only need entries, if any.
                    leader.send_append(self, node, send_if_empty=node in added)
        return cs

    def read_index(self, ctx: bytes) -> None:
        if self.role is Role.LEADER:
            leader.leader_read_index(self, self.id, ctx)
        elif self.lead == NONE:
            raise NotLeaderError(NONE)
        else:
            self._send(MT.READ_INDEX, self.lead, context=ctx)

    def report_unreachable(self, peer: int) -> None:
        """The transport failed to send to ``peer``: stop streaming to it and probe."""
        pr = self.tracker.progress.get(peer)
        if self.role is Role.LEADER and pr is not None and peer != self.id:
            pr.unreachable()

    def report_snapshot(self, peer: int, ok: bool) -> None:
        """The transport delivered (or failed to deliver) the snapshot sent to ``peer``."""
        pr = self.tracker.progress.get(peer)
        if self.role is Role.LEADER and pr is not None and pr.state is ProgressState.SNAPSHOT:
            pr.snapshot_reported(ok)

    def transfer_leadership(self, to: int) -> None:
        self._require_leader()
        if to not in self.tracker.voters:
            raise ConsensusError(f"cannot transfer leadership to non-voter {to}")
        if to == self.id or to == self.lead_transferee:
            return
        self.election_elapsed = 0  # the transfer is aborted after one election timeout
        self.lead_transferee = to
        if self.tracker.progress[to].match == self.log.last_index():
            self._send(MT.TIMEOUT_NOW, to)
        else:
            leader.send_append(self, to)

    # -- persistence feedback (from RawNode.advance) ---------------------------------------
    def on_persisted(self, index: int, term: int) -> None:
        """Entries up to (index, term) are durable locally."""
        self.log.unstable.stable_to(index, term)
        if self.role is Role.LEADER and self.log.match_term(index, term):
            pr = self.tracker.progress.get(self.id)
            if pr is not None and pr.ack(index) and leader.maybe_commit(self):
                leader.bcast_append(self)

    def on_applied(self, committed: tuple[Entry, ...]) -> None:
        self.log.applied_to(committed[-1].index)
        if self.role is Role.LEADER:
            size = sum(e.size() for e in committed if e.term == self.term)
            self.uncommitted_size = max(0, self.uncommitted_size - size)
            self._maybe_leave_joint()

    def _maybe_leave_joint(self) -> None:
        """etcd's auto-leave: once the joint configuration is applied, propose to leave."""
        if self.tracker.outgoing and self.pending_conf_index <= self.log.applied:
            # A transfer in flight or full buffers refuse it: the next heartbeat retries.
            with contextlib.suppress(ProposalDroppedError):
                self.propose_conf_change(ConfChange(type=ConfChangeType.LEAVE_JOINT))
