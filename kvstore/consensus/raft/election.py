"""Elections: campaigns (PreVote and Vote), counting the answers, granting votes.

Performs no I/O; functions of a ``Raft`` (kept apart, like leader.py, so each module
stays small). Rules kept (Raft paper / thesis section numbers):
- At most one vote per term (5.2); a vote only for a log at least as up to date as
  ours (5.4.1), and none while our log lacks entries we acknowledged (``lost_through``).
- A pre-candidate (9.6) changes neither term nor vote; only a won pre-election starts
  a real one, so a partitioned node cannot inflate its term.
- No campaign while a committed conf change is unapplied: the voter set is unknown.
- Under a live leader's lease (CheckQuorum, 6.2) votes of a higher term are ignored,
  except those a leadership transfer asked for (``CAMPAIGN_TRANSFER``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvstore.consensus.raft import leader
from kvstore.consensus.raft.quorum import VoteResult
from kvstore.consensus.types import NONE, CompactedError, EntryType, Message, MessageType, Role

if TYPE_CHECKING:
    from kvstore.consensus.raft.raft import Raft

MT = MessageType
CAMPAIGN_TRANSFER = b"transfer"
"""Context of a VOTE sent because of TIMEOUT_NOW: voters ignore their leader lease."""


def hup(r: Raft, *, transfer: bool) -> None:
    if r.role is Role.LEADER or not r.promotable():
        return
    if has_unapplied_conf_change(r):
        # Its effect on membership is not known yet: we cannot count votes right.
        return
    if r.pre_vote and not transfer:
        campaign(r, pre=True, transfer=False)
    else:
        campaign(r, pre=False, transfer=transfer)


def has_unapplied_conf_change(r: Raft) -> bool:
    if r.log.applied >= r.log.committed:
        return False
    try:
        ents = r.log.entries(r.log.applied + 1, r.log.committed + 1)
    except CompactedError:
        return False
    return any(e.type is EntryType.CONF_CHANGE for e in ents)


def campaign(r: Raft, *, pre: bool, transfer: bool) -> None:
    if pre:
        r._become_pre_candidate()
        vote_type, term = MT.PRE_VOTE, r.term + 1
    else:
        r._become_candidate()
        vote_type, term = MT.VOTE, r.term
    if r.tracker.record_vote(r.id, True) is VoteResult.WON:
        won(r, pre)
        return
    last, last_term = r.log.last_index(), r.log.last_term()
    ctx = CAMPAIGN_TRANSFER if transfer else b""
    for node in sorted(r.tracker.voters | r.tracker.outgoing):
        if node != r.id:
            r._send(vote_type, node, term=term, index=last, log_term=last_term, context=ctx)


def won(r: Raft, pre: bool) -> None:
    if pre:
        campaign(r, pre=False, transfer=False)
    else:
        r._become_leader()
        leader.bcast_append(r)


def ignores_in_lease(r: Raft, m: Message) -> bool:
    """A VOTE or PRE_VOTE of a higher term while we heard from a live leader recently:
    the candidate is disruptive, unless a leadership transfer sent it."""
    in_lease = r.check_quorum and r.lead != NONE and r.election_elapsed < r.election_tick
    return in_lease and m.context != CAMPAIGN_TRANSFER


def handle_vote(r: Raft, m: Message) -> None:
    resp = MT.VOTE_RESP if m.type is MT.VOTE else MT.PRE_VOTE_RESP
    can_vote = (
        r.vote == m.from_
        or (r.vote == NONE and r.lead == NONE)
        or (m.type is MT.PRE_VOTE and m.term > r.term)
    )
    if r.log.last_index() < r.lost_through:
        # Entries we acknowledged may exist nowhere else but on the leader: a vote
        # now could elect a node that lacks them. Wait until we hold them again.
        r.drop("vote_lost_log")
        r._send(resp, m.from_, reject=True)
    elif can_vote and r.log.is_up_to_date(m.index, m.log_term):
        r._send(resp, m.from_, term=m.term)
        if m.type is MT.VOTE:
            r.election_elapsed = 0
            r.vote = m.from_
    else:
        r._send(resp, m.from_, reject=True)


def step_candidate(r: Raft, m: Message) -> None:
    t = m.type
    mine = MT.PRE_VOTE_RESP if r.role is Role.PRE_CANDIDATE else MT.VOTE_RESP
    if t in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
        r.become_follower(m.term, m.from_)  # someone won this term
        r._step_follower(m)
    elif t is mine:
        result = r.tracker.record_vote(m.from_, not m.reject)
        if result is VoteResult.WON:
            won(r, r.role is Role.PRE_CANDIDATE)
        elif result is VoteResult.LOST:
            r.become_follower(r.term, NONE)
    elif t is MT.READ_INDEX:
        r.drop("not_leader")
    else:
        r.drop("unexpected_" + t.name.lower())
