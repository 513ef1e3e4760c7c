"""The distinguished proposer at work: phase 2 replication, commit, heartbeats,
read confirmation and leadership transfer. Performs no I/O.

Functions over a ``PaxosNode`` that leads (``n.lead`` is its Leader state).
Invariants:
- an ACCEPT carries slots ``index+1 ..`` of the leader's log and its commit; a slot
  is chosen when a majority of every configuration in the chain holds it in our
  ballot (``quorum.quorum_index`` over the acceptors' ``match``, ours counted only
  once durable);
- a read confirms at the commit index it was queued with, once a quorum answered
  a heartbeat round sent after it was queued, and never before the slots this
  leader recovered in phase 1 are chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvstore.consensus.paxos import quorum, value
from kvstore.consensus.paxos.progress import Event, State
from kvstore.consensus.paxos.proposer import Leader
from kvstore.consensus.types import (
    JOINING,
    CompactedError,
    EntryType,
    Message,
    MessageType,
    ProposalDroppedError,
    ProposalId,
    ReadState,
)

if TYPE_CHECKING:
    from kvstore.consensus.paxos.node import PaxosNode

MT = MessageType

COMMIT_ONLY = b"commit"
"""ACCEPT context of a bare commit notice: the acceptor learns the commit and does
not answer (an answer would carry nothing new), unless it finds a gap."""

REACCEPT = b"reaccept"
"""ACCEPT context after phase 1: "accept again, in this ballot, the values you hold
in slots index+1 .. log_term" (no entries). Sent only to a promiser whose promise
reported, for each of those slots, the value this leader proposes there; the
acceptor re-accepts only if it still holds exactly that promise."""

READ_ROUND = b"read:"
"""PAXOS_HEARTBEAT context of a read round: ``read:<seq>``, echoed by acceptors; an
answer confirms every read queued up to ``seq``."""

LOST_AFTER_BEATS = 4
"""Heartbeat answers behind our ACCEPTs, in a row, after which we take them as lost."""


# -- phase 2 -----------------------------------------------------
def propose(n: PaxosNode, data: bytes, type_: EntryType) -> ProposalId:
    lead = n._require_leader()
    if lead.transfer_to:
        raise ProposalDroppedError("leadership transfer in progress")
    e = value.new_value(lead.ballot, n.log.last_index() + 1, data, type_)
    if lead.uncommitted_bytes and lead.uncommitted_bytes + e.size() > (n.cfg.max_uncommitted_bytes):
        raise ProposalDroppedError("too many uncommitted bytes")
    n.log.write([e])
    n.acceptor.accepted_through = e.index
    lead.track(e.index, e.size())
    n._dirty = True
    return ProposalId(term=lead.ballot, index=e.index)


def replicate(n: PaxosNode, lead: Leader, to: int) -> None:
    """Send ``to`` what it lacks, as far as its flow control allows."""
    pr = lead.progress[to]
    last = n.log.last_index()
    while not pr.paused(n.cfg.max_inflight_msgs, n.cfg.max_inflight_bytes):
        if pr.next < n.log.first_index():
            send_snapshot(n, lead, to)
            return
        if pr.next > last and (pr.state is State.REPLICATE or pr.match >= last):
            return
        hi = last
        if pr.reaccept_to >= pr.next and pr.state is State.REPLICATE:
            if pr.next > lead.recovered_commit:
                # It holds our recovered values already (its promise said so): one
                # REACCEPT moves them all to our ballot, no values on the wire.
                upto, pr.reaccept_to = pr.reaccept_to, 0
                n._send(
                    MT.ACCEPT,
                    to,
                    term=lead.ballot,
                    index=pr.next - 1,
                    log_term=upto,
                    commit=n.acceptor.commit,
                    context=REACCEPT,
                )
                lead.commit_sent[to] = n.acceptor.commit
                pr.sent(upto, 0)
                continue
            hi = lead.recovered_commit  # send the chosen slots it lacks first
        try:
            ents = n.log.slice(pr.next, hi + 1, n.cfg.max_size_per_msg)
        except CompactedError:
            pr.next = 0  # the driver compacted under us: snapshot on the next loop
            continue
        prev = pr.next - 1
        n._send(
            MT.ACCEPT,
            to,
            term=lead.ballot,
            index=prev,
            entries=tuple(ents),
            commit=n.acceptor.commit,
        )
        lead.commit_sent[to] = n.acceptor.commit
        pr.sent(prev + len(ents), sum(e.size() for e in ents))


def send_snapshot(n: PaxosNode, lead: Leader, to: int) -> None:
    pr = lead.progress[to]
    snap = n._snapshot()
    n._send(MT.PAXOS_SNAPSHOT, to, term=lead.ballot, snapshot=snap)
    pr.on(Event.NEED_SNAPSHOT)
    pr.pending_snapshot = snap.metadata.index


def has_sends(n: PaxosNode) -> bool:
    """Whether ``flush`` would send anything now (a pure mirror of it, for has_ready)."""
    lead = n.lead
    if lead is None:
        return False
    if lead.read_round_due:
        return True
    commit, first, last = n.acceptor.commit, n.log.first_index(), n.log.last_index()
    for peer, pr in lead.progress.items():
        if pr.state is State.REPLICATE and lead.commit_sent.get(peer, 0) < min(commit, pr.match):
            return True
        if not n._dirty or pr.paused(n.cfg.max_inflight_msgs, n.cfg.max_inflight_bytes):
            continue
        # As the first pass of ``replicate``: it sends unless the acceptor has it all.
        if pr.next < first or not (
            pr.next > last and (pr.state is State.REPLICATE or pr.match >= last)
        ):
            return True
    return False


def flush(n: PaxosNode) -> None:
    lead = n.lead
    if lead is None:
        return
    if n._dirty:
        n._dirty = False
        for peer in sorted(lead.progress):
            replicate(n, lead, peer)
    commit = n.acceptor.commit
    for peer, pr in sorted(lead.progress.items()):
        if pr.state is State.REPLICATE and lead.commit_sent.get(peer, 0) < min(commit, pr.match):
            lead.commit_sent[peer] = commit
            n._send(
                MT.ACCEPT,
                peer,
                term=lead.ballot,
                index=pr.match,
                commit=commit,
                context=COMMIT_ONLY,
            )
    if lead.read_round_due:
        lead.read_round_due = False
        broadcast_heartbeat(n, lead)


def on_accepted(n: PaxosNode, m: Message) -> str | None:
    lead = n.lead
    if lead is None or m.term != lead.ballot:
        mine = lead.ballot if lead else n.candidate.ballot if n.candidate else 0
        if m.reject and mine and m.term > mine:
            n._preempted(m.term, m.from_)
            return None
        return "stale_ballot"
    pr = lead.progress.get(m.from_)
    if pr is None:
        return "unknown_peer"
    pr.recent_active = True
    if m.reject and m.context == JOINING:
        # It joined with no membership: only a snapshot gives it one, compacted or
        # not (the join contract in types.py).
        if pr.state is not State.SNAPSHOT:
            send_snapshot(n, lead, m.from_)
        return None
    if m.reject:
        if m.index < pr.match or (pr.state is State.PROBE and m.index != pr.next - 1):
            return "stale_ack"
        pr.on(Event.GAP)
        # Not clamped by match: after a restart the acceptor only vouches for
        # its commit, though the values it accepted are still durable.
        pr.next = m.reject_hint + 1
        replicate(n, lead, m.from_)
        return None
    grew = pr.acked(m.index)
    if pr.state is State.PROBE:
        pr.on(Event.ACKED)
    elif pr.match >= pr.pending_snapshot:
        pr.on(Event.SNAPSHOT_DONE)  # means nothing unless a snapshot is in flight
    if grew:
        maybe_commit(n, lead)
    maybe_timeout_now(n, lead)
    replicate(n, lead, m.from_)
    return None


def maybe_commit(n: PaxosNode, lead: Leader) -> None:
    match = {n: pr.match for n, pr in lead.progress.items()}
    match[n.id] = lead.self_match
    idx = quorum.quorum_index(n._configs(), match)
    if idx <= n.acceptor.commit:
        return
    n.acceptor.commit = idx
    lead.chosen_through(idx)
    if idx >= lead.takeover_last and lead.deferred_reads:
        reads, lead.deferred_reads = lead.deferred_reads, []
        for ctx, requester in reads:
            read(n, lead, ctx, requester)


def maybe_timeout_now(n: PaxosNode, lead: Leader) -> None:
    to = lead.transfer_to
    if lead.transfer_sent or not to or to not in lead.progress:
        return
    if lead.progress[to].match >= n.log.last_index():
        n._send(MT.PAXOS_TIMEOUT_NOW, to, term=lead.ballot)
        lead.transfer_sent = True


# -- heartbeats, liveness, reads --------------------------------------------
def tick_leader(n: PaxosNode, lead: Leader) -> None:
    lead.heartbeat_elapsed += 1
    if lead.heartbeat_elapsed >= n.cfg.heartbeat_tick:
        broadcast_heartbeat(n, lead)
    if lead.transfer_to:
        lead.transfer_elapsed += 1
        if lead.transfer_elapsed >= n.cfg.election_tick:
            lead.transfer_to = 0
            lead.transfer_sent = False
    n.elapsed += 1
    if n.elapsed < n.cfg.election_tick:
        return
    n.elapsed = 0
    if n.cfg.check_quorum:
        live = {n for n, pr in lead.progress.items() if pr.recent_active} | {n.id}
        if not quorum.has_quorum(n._configs(), live):
            n._become_follower()
            return
    for pr in lead.progress.values():
        pr.recent_active = False


def broadcast_heartbeat(n: PaxosNode, lead: Leader) -> None:
    lead.heartbeat_elapsed = 0
    ctx = b"%s%d" % (READ_ROUND, lead.read_seq) if lead.reads else b""
    for peer in sorted(lead.progress):
        commit = min(n.acceptor.commit, lead.progress[peer].match)
        n._send(MT.PAXOS_HEARTBEAT, peer, term=lead.ballot, commit=commit, context=ctx)


def on_heartbeat_resp(n: PaxosNode, m: Message) -> str | None:
    lead = n.lead
    if m.reject:
        mine = lead.ballot if lead else n.candidate.ballot if n.candidate else 0
        if mine and m.term > mine:
            n._preempted(m.term, m.from_)
            return None
        return "stale_ballot"
    if lead is None or m.term != lead.ballot:
        return "stale_ballot"
    pr = lead.progress.get(m.from_)
    if pr is None:
        return "unknown_peer"
    pr.recent_active = True
    seq = m.context.removeprefix(READ_ROUND)
    if m.context.startswith(READ_ROUND) and seq.isdigit():
        pr.read_ack = max(pr.read_ack, int(seq))
        release_reads(n, lead)
    if pr.acked(m.index):  # also frees in-flight ACCEPTs it answered (FINDINGS F2)
        # It answers in our ballot: it holds our values through m.index.
        maybe_commit(n, lead)
    if pr.state is State.SNAPSHOT:
        if pr.match >= pr.pending_snapshot:
            pr.on(Event.SNAPSHOT_DONE)
        else:
            pr.snapshot_wait += 1
            if pr.snapshot_wait >= n.cfg.election_tick:
                pr.on(Event.SNAPSHOT_LOST)  # it was lost: send it again
    elif pr.state is State.REPLICATE and m.index < pr.next - 1:
        # Behind what we sent: in flight, lost, or it restarted and only vouches for
        # its commit. Probe from what it has once that is the likely story.
        # (Not at once when the window is full: with slow links that resends every
        # slot twice and halves the pace; answered slots were freed above.)
        pr.behind_beats += 1
        if pr.behind_beats >= LOST_AFTER_BEATS:
            pr.on(Event.RESTARTED)
            pr.next = m.index + 1
    elif pr.state is State.PROBE:
        pr.probe_sent = False
        pr.next = min(pr.next, m.index + 1)
    if pr.state is not State.REPLICATE or pr.next <= n.log.last_index():
        replicate(n, lead, m.from_)
    return None


def read(n: PaxosNode, lead: Leader, ctx: bytes, requester: int) -> None:
    if n.acceptor.commit < lead.takeover_last:
        lead.deferred_reads.append((ctx, requester))
        return
    lead.add_read(n.acceptor.commit, ctx, requester)
    release_reads(n, lead)


def release_reads(n: PaxosNode, lead: Leader) -> None:
    if not lead.reads:
        return
    acks = {n: pr.read_ack for n, pr in lead.progress.items()}
    acks[n.id] = lead.read_seq
    for r in lead.pop_confirmed(quorum.quorum_index(n._configs(), acks)):
        if r.requester == n.id:
            n.read_states.append(ReadState(index=r.index, request_ctx=r.ctx))
        else:
            n._send(MT.READ_INDEX_RESP, r.requester, index=r.index, context=r.ctx)


def on_read_index(n: PaxosNode, m: Message) -> str | None:
    if n.lead is None:
        return "not_leader"
    read(n, n.lead, m.context, m.from_)
    return None


def on_read_index_resp(n: PaxosNode, m: Message) -> str | None:
    if m.from_ != n.leader:
        return "not_leader"
    n.read_states.append(ReadState(index=m.index, request_ctx=m.context))
    return None
