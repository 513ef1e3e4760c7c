"""Leader-side replication: what a leader sends, and how it reads the answers.

Performs no I/O; functions of a ``Raft`` (kept apart so each module stays small).
Rules kept: appends to a follower follow its ``Progress`` state (probe one at a
time, replicate within the in-flight window, nothing while a snapshot is out); an
entry commits when a quorum of voters stores it AND it is of the leader's term;
a read index is served only after a heartbeat round a quorum acknowledged, and
only once the leader committed an entry of its own term.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvstore.consensus.raft.progress import Progress, ProgressState
from kvstore.consensus.raft.quorum import VoteResult
from kvstore.consensus.types import (
    CompactedError,
    Entry,
    Message,
    MessageType,
    ProposalDroppedError,
    ReadState,
    UnavailableError,
)

if TYPE_CHECKING:
    from kvstore.consensus.raft.raft import Raft

MT = MessageType


def step_leader(r: Raft, m: Message) -> None:
    t = m.type
    if t is MT.READ_INDEX:
        leader_read_index(r, m.from_, m.context)
        return
    pr = r.tracker.progress.get(m.from_)
    if t is MT.APPEND_RESP and pr is not None:
        pr.recent_active = True
        handle_append_resp(r, m, pr)
    elif t is MT.HEARTBEAT_RESP and pr is not None:
        pr.recent_active = True
        handle_heartbeat_resp(r, m, pr)
    elif t in (MT.VOTE_RESP, MT.PRE_VOTE_RESP):
        r.drop("late_vote_resp")
    elif pr is None:
        r.drop("unknown_node")
    else:
        r.drop("unexpected_" + t.name.lower())


def handle_append_resp(r: Raft, m: Message, pr: Progress) -> None:
    if m.index > r.log.last_index():
        r.drop("ack_past_log")  # our log never shrinks within our term: a bogus answer
        return
    if m.reject:
        if m.index == 0:
            # Every configured node holds the empty prefix; only a node that joined
            # with no membership at all rejects it: it needs a snapshot for the base
            # configuration, compacted or not.
            if pr.state is not ProgressState.SNAPSHOT:
                send_snapshot(r, m.from_, pr)
            return
        hint = m.reject_hint
        if m.log_term > 0:
            hint, _ = r.log.find_conflict_by_term(m.reject_hint, m.log_term)
        if pr.reject(m.index, hint):
            send_append(r, m.from_)
        return
    was_paused = pr.is_paused()
    advanced = pr.ack(m.index)
    if (
        pr.state is ProgressState.SNAPSHOT
        and m.index >= pr.pending_snapshot
        and pr.match + 1 >= r.log.first_index()
    ):
        pr.snapshot_done()  # the follower restored it; our log continues from there
        advanced = True
    if not advanced:
        if was_paused and not pr.is_paused():
            send_append(r, m.from_)
        return
    if maybe_commit(r):
        bcast_append(r)
    elif was_paused:
        send_append(r, m.from_)
    while send_append(r, m.from_, send_if_empty=False):
        pass
    if m.from_ == r.lead_transferee and pr.match == r.log.last_index():
        r._send(MT.TIMEOUT_NOW, m.from_)


def handle_heartbeat_resp(r: Raft, m: Message, pr: Progress) -> None:
    if m.reject and m.reject_hint < pr.match:
        # The follower's log ends before entries it acknowledged (raft.py,
        # _handle_heartbeat): replicate from where it really ends. Lowering match is
        # always safe (the commit index never goes back); keeping it would leave the
        # follower empty for good.
        r.drop("follower_lost_log")
        pr.lost_log(m.reject_hint)
    pr.heartbeat_resp()
    if pr.match < r.log.last_index():
        if pr.state is ProgressState.REPLICATE and pr.inflights.full():
            # All in-flight appends may be lost: an empty append at the optimistic
            # next makes the follower either ack (freeing the window) or reject.
            send_empty_append(r, m.from_, pr)
        else:
            send_append(r, m.from_)
    if m.context:
        acks = r.read_only.ack(m.from_, m.context)
        if acks is not None and r.tracker.vote_result(dict.fromkeys(acks, True)) is VoteResult.WON:
            for req in r.read_only.advance(m.context):
                answer_read(r, req.from_, req.index, req.ctx)


def maybe_commit(r: Raft) -> bool:
    if r.log.maybe_commit(r.tracker.committed(), r.term):
        if r.pending_reads:
            reads, r.pending_reads = r.pending_reads, []
            for node, ctx in reads:
                leader_read_index(r, node, ctx)
        return True
    return False


def send_append(r: Raft, to: int, *, send_if_empty: bool = True) -> bool:
    pr = r.tracker.progress[to]
    if pr.is_paused():
        return False
    prev = pr.next - 1
    last = r.log.last_index()
    try:
        prev_term = r.log.term(prev)
        ents = r.log.entries(pr.next, last + 1, r.max_size_per_msg) if prev < last else []
    except CompactedError:
        return send_snapshot(r, to, pr)
    except UnavailableError:
        r.drop("progress_past_log")  # cannot happen with the ack check above; never raise
        return False
    if not ents and not send_if_empty:
        return False
    r._send(
        MT.APPEND,
        to,
        index=prev,
        log_term=prev_term,
        entries=tuple(ents),
        commit=r.log.committed,
    )
    pr.sent_entries(len(ents), sum(e.size() for e in ents))
    return True


def send_empty_append(r: Raft, to: int, pr: Progress) -> None:
    try:
        prev_term = r.log.term(pr.next - 1)
    except CompactedError:
        # match < next - 1 < first index: whatever was in flight, the follower now
        # needs entries we compacted (tests/sim FINDINGS F1).
        send_snapshot(r, to, pr)
        return
    except UnavailableError:
        return
    r._send(MT.APPEND, to, index=pr.next - 1, log_term=prev_term, commit=r.log.committed)


def send_snapshot(r: Raft, to: int, pr: Progress) -> bool:
    if not pr.recent_active:
        return False  # do not ship a snapshot to a node that may be down
    snap = r.log.storage.snapshot()
    if snap.metadata.index < r.log.first_index() - 1:
        r.drop("local_snapshot_behind_log")
        return False
    r._send(MT.SNAPSHOT, to, snapshot=snap)
    pr.need_snapshot(snap.metadata.index)
    return True


def bcast_append(r: Raft) -> None:
    for node in r.tracker.progress:
        if node != r.id:
            send_append(r, node)


def bcast_heartbeat(r: Raft, ctx: bytes) -> None:
    for node, pr in r.tracker.progress.items():
        if node != r.id:
            commit = min(pr.match, r.log.committed)
            r._send(MT.HEARTBEAT, node, commit=commit, context=ctx)


def append(r: Raft, ents: list[Entry]) -> int:
    """Leader: stamp term and index on new entries and add them to the log."""
    last = r.log.last_index()
    size = sum(e.size() for e in ents)
    if r.uncommitted_size and r.uncommitted_size + size > r.max_uncommitted_bytes:
        raise ProposalDroppedError("too many uncommitted bytes")
    stamped = [
        Entry(term=r.term, index=last + i + 1, type=e.type, data=e.data) for i, e in enumerate(ents)
    ]
    r.uncommitted_size += size
    return r.log.append(stamped)


def leader_read_index(r: Raft, from_: int, ctx: bytes) -> None:
    if not r.log.match_term(r.log.committed, r.term):
        # Our commit index may lag the cluster's until our term's no-op commits.
        r.pending_reads.append((from_, ctx))
        return
    if r.tracker.is_singleton():
        answer_read(r, from_, r.log.committed, ctx)
        return
    if r.read_only.add(r.log.committed, ctx, from_, r.id):
        bcast_heartbeat(r, ctx)


def answer_read(r: Raft, to: int, index: int, ctx: bytes) -> None:
    if to == r.id:
        r.read_states.append(ReadState(index=index, request_ctx=ctx))
    else:
        r._send(MT.READ_INDEX_RESP, to, index=index, context=ctx)
