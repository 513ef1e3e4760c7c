"""Membership and per-member replication progress of one Raft group (performs no I/O).

Invariant: ``progress`` has exactly one entry per member (voter, outgoing voter
or learner) of the current configuration; votes and commit math count voters only
(in a joint configuration, a majority of each half). ``learners_next`` are outgoing
voters being demoted: they vote until the joint configuration is left.
"""

from __future__ import annotations

from kvstore.consensus.raft.progress import Inflights, Progress, ProgressState
from kvstore.consensus.raft.quorum import VoteResult, joint_committed, joint_vote
from kvstore.consensus.types import ConfState, PeerProgress


class ProgressTracker:
    def __init__(self, max_inflight_msgs: int, max_inflight_bytes: int) -> None:
        self.max_inflight_msgs = max_inflight_msgs
        self.max_inflight_bytes = max_inflight_bytes
        self.voters: frozenset[int] = frozenset()
        self.outgoing: frozenset[int] = frozenset()
        self.learners: frozenset[int] = frozenset()
        self.learners_next: frozenset[int] = frozenset()
        self.all_members: frozenset[int] = frozenset()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}

    # -- configuration -------------------------------------------------------------
    def conf_state(self) -> ConfState:
        return ConfState(
            voters=self.voters,
            learners=self.learners | self.learners_next,
            voters_outgoing=self.outgoing,
        )

    def members(self) -> frozenset[int]:
        return self.all_members

    def is_voter(self, node: int) -> bool:
        return node in self.voters or node in self.outgoing

    def is_singleton(self) -> bool:
        return len(self.voters) == 1 and not self.outgoing

    def set_conf(self, cs: ConfState, next_index: int) -> list[int]:
        """Adopt ``cs``; new members get a fresh probing Progress. Returns the new ids."""
        self.voters = frozenset(cs.voters)
        self.outgoing = frozenset(cs.voters_outgoing)
        self.learners = frozenset(cs.learners) - self.voters - self.outgoing
        self.learners_next = frozenset(cs.learners) & self.outgoing
        self.all_members = members = self.voters | self.outgoing | self.learners
        for gone in [n for n in self.progress if n not in members]:
            del self.progress[gone]
        added = []
        for node in sorted(members):
            pr = self.progress.get(node)
            if pr is None:
                pr = self._new_progress(next_index)
                # A new member is presumed alive so it can be sent a snapshot at once.
                pr.recent_active = True
                self.progress[node] = pr
                added.append(node)
            pr.is_learner = node in self.learners
        return added

    def _new_progress(self, next_index: int) -> Progress:
        return Progress(
            match=0,
            next=next_index,
            inflights=Inflights(self.max_inflight_msgs, self.max_inflight_bytes),
        )

    def reset_progress(self, next_index: int, self_id: int, self_match: int) -> None:
        """Fresh progress for every member (a new term / a new leader)."""
        for node in list(self.progress):
            pr = self._new_progress(next_index)
            pr.is_learner = node in self.learners
            if node == self_id:
                pr.match = self_match
                pr.state = ProgressState.REPLICATE
                pr.recent_active = True
            self.progress[node] = pr

    def peer_progress(self) -> tuple[PeerProgress, ...]:
        """Every member's progress as Status reports it (meaningful on a leader)."""
        return tuple(
            PeerProgress(
                id=node,
                match=pr.match,
                next=pr.next,
                state=pr.state.value,
                inflight=pr.inflights.count(),
                learner=pr.is_learner,
            )
            for node, pr in sorted(self.progress.items())
        )

    # -- commit ----------------------------------------------------------------------
    def committed(self) -> int:
        match = {n: pr.match for n, pr in self.progress.items()}
        return joint_committed(self.voters, self.outgoing, match)

    def quorum_active(self, self_id: int) -> bool:
        """CheckQuorum: did a quorum (counting ourselves) talk to us recently?"""
        active = {n: (n == self_id or pr.recent_active) for n, pr in self.progress.items()}
        return joint_vote(self.voters, self.outgoing, active) is VoteResult.WON

    # -- elections -------------------------------------------------------------------
    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node: int, granted: bool) -> VoteResult:
        self.votes.setdefault(node, granted)
        return joint_vote(self.voters, self.outgoing, self.votes)

    def vote_result(self, votes: dict[int, bool]) -> VoteResult:
        return joint_vote(self.voters, self.outgoing, votes)
