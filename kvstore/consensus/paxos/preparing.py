"""A would-be proposer in phase 1: PREPARE, count PROMISEs, take over the log.

Functions over a ``PaxosNode`` that campaigns (``n.candidate`` is its Candidate
state); the acceptor's answer to a PREPARE stays in node.py. Performs no I/O.
Rules kept:
- no campaign while our log lacks values we acknowledged (``lost_through``): any
  voter may lead in Paxos, and a quorum lacking them could fill their slots;
- a ballot is above every ballot seen, so one node never reuses one;
- a candidate wins when a quorum of every configuration in the chain (the applied
  one plus the pending changes, those recovered included) promised its ballot and
  ``recovery.recover`` found every open slot's value; only then does it write the
  recovered slots and lead;
- a promiser's snapshot for a chosen prefix we lack restarts phase 1 above it, in
  the same ballot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvstore.consensus.paxos import ballot as ballots
from kvstore.consensus.paxos import checks, leading, membership, quorum, value
from kvstore.consensus.paxos.progress import State
from kvstore.consensus.paxos.proposer import Candidate, Leader
from kvstore.consensus.paxos.recovery import Promise, Recovery, recover
from kvstore.consensus.types import NONE, Message, MessageType

if TYPE_CHECKING:
    from kvstore.consensus.paxos.node import PaxosNode

MT = MessageType
TRANSFER = b"transfer"
"""PREPARE context of a leadership transfer: acceptors skip the leader-lease check."""


def campaign(n: PaxosNode, *, transfer: bool) -> None:
    if n.log.last_index() < n.lost_through:
        # Any voter may lead in Paxos (no log comparison as in Raft's votes): with our
        # own promise counted, a quorum lacking the lost values could fill their slots.
        n.dropped["campaign_lost_log"] += 1
        n.elapsed = 0
        return
    b = ballots.next_after(max(n.max_seen, n.acceptor.promised), n.id)
    n.max_seen = b
    n.acceptor.promise(b)
    n.lead = None
    n.leader = NONE
    start = n.acceptor.commit + 1
    n.candidate = Candidate(ballot=b, start=start, transfer=transfer)
    n.candidate.promises[n.id] = n.acceptor.report(start)
    n.elapsed = 0
    n.timeout = n._random_timeout()
    for peer in sorted(n._all_voters() - {n.id}):
        n._send(MT.PREPARE, peer, term=b, index=start, context=TRANSFER if transfer else b"")
    try_win(n, n.candidate)


def campaign_again(n: PaxosNode, cand: Candidate) -> None:
    start = n.acceptor.commit + 1
    n.candidate = Candidate(ballot=cand.ballot, start=start, transfer=cand.transfer)
    n.candidate.promises[n.id] = n.acceptor.report(start)
    ctx = TRANSFER if cand.transfer else b""
    for peer in sorted(n._all_voters() - {n.id}):
        n._send(MT.PREPARE, peer, term=cand.ballot, index=start, context=ctx)
    try_win(n, n.candidate)


def try_win(n: PaxosNode, cand: Candidate) -> None:
    rec = recover(cand.start, cand.ballot, cand.promises.values())
    if rec.incomplete:
        return
    changes = n._pending_changes(before=cand.start)
    for e in rec.entries:
        cc = membership.decode(e)
        if cc is not None and e.index > n.applied:
            changes.append(cc)
    if not quorum.has_quorum(membership.chain(n.conf, changes), cand.promises.keys()):
        return
    n.candidate = None
    ents = list(rec.entries)
    last = n.log.last_index()
    while ents and ents[0].index <= last and ents[0] == n.log.get(ents[0].index):
        ents.pop(0)  # already ours: no need to write it again
    n.log.write(ents)
    n._note_written(ents)
    last = n.log.last_index()
    n.acceptor.commit = max(n.acceptor.commit, rec.commit)
    n.acceptor.accepted_through = last
    lead = Leader(ballot=cand.ballot, takeover_last=last, self_match=n.log.stable_last())
    n.lead = lead
    n.leader = n.id
    n.elapsed = 0
    n._sync_members()
    lead.recovered_commit = rec.commit
    for peer, pr in lead.progress.items():
        p = cand.promises.get(peer)
        if p is not None:
            pr.match, pr.next, pr.state = p.commit, p.commit + 1, State.REPLICATE
            pr.reaccept_to = _held_through(p, rec, cand.start, cand.ballot)
    n._dirty = True
    leading.maybe_commit(n, lead)


def on_promise(n: PaxosNode, m: Message) -> str | None:
    cand = n.candidate
    if m.reject:
        mine = cand.ballot if cand else n.lead.ballot if n.lead else 0
        if mine and m.term > mine:
            n._preempted(m.term, m.from_)
            return None
        return "stale_ballot"
    if cand is None or m.term != cand.ballot:
        return "stale_ballot"
    if m.index != cand.start:
        return "stale_promise"
    if m.from_ not in n._all_voters():
        return "not_voter"
    cand.promises[m.from_] = checks.promise_of(m)
    try_win(n, cand)
    return None


def on_timeout_now(n: PaxosNode, m: Message) -> str | None:
    if m.term != n.acceptor.promised or not n._is_voter() or n.lead is not None:
        return "stale_ballot"
    campaign(n, transfer=True)
    return None


def _held_through(p: Promise, rec: Recovery, start: int, b: int) -> int:
    """The last slot through which promiser ``p`` reported, slot by slot from the
    recovered commit on, the very value the new leader proposes there (0: none)."""
    held = 0
    for s in range(rec.commit + 1, start + len(rec.entries)):
        mine, theirs = rec.entries[s - start], p.at(s)
        if theirs is None or value.reaccept(theirs, b) != mine:
            break
        held = s
    return held
