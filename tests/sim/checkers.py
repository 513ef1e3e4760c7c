"""Safety checkers for the simulation; they raise ``SafetyViolation`` at the first breach.

Invariants checked (Raft paper figure 3; for Multi-Paxos, term = ballot, index = slot):
- election safety: at most one leader per term, over the whole run;
- stable-state sanity: a node's persisted term never decreases, it never votes for two
  candidates in one term, its persisted commit never decreases (Raft);
- log matching, on stable storage (Raft): one (index, term) names one entry and one
  predecessor term, so two logs holding the same (index, term) agree up to there (by
  induction); a periodic full pairwise scan double-checks it. Paxos: one (slot, ballot)
  names one value;
- leader completeness (Raft): a leader of term T holds every entry applied anywhere
  while the highest persisted term was below T;
- state machine safety: every node applies the same entry at an index, contiguously,
  never beyond its durable commit; state machine images (snapshots) agree by digest;
- linearizable reads: a ReadState answering a read_index request is at or above every
  index applied anywhere before the request was made;
- no lost acknowledgement: a client value is chosen at exactly one index, and at the
  end every member's state machine holds every acknowledged value (``check_converged``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.types import (
    NONE,
    CompactedError,
    Entry,
    EntryType,
    HardState,
    ReadState,
    Snapshot,
    UnavailableError,
)


class SafetyViolation(AssertionError):
    """A consensus invariant was broken; the message says which and where."""


@dataclass(frozen=True, slots=True)
class Traits:
    """What a core promises beyond the shared apply-order rules."""

    raft_log: bool
    """Raft's log rules: log matching, leader completeness, one vote per term.
    Multi-Paxos keeps only the shared checks."""


RAFT_TRAITS = Traits(raft_log=True)
PAXOS_TRAITS = Traits(raft_log=False)

GENESIS_DIGEST = b"\0" * 16


def chain(digest: bytes, e: Entry) -> bytes:
    """The state machine's digest after applying ``e``: its history of values (terms are
    compared entry by entry in ``on_apply``; a snapshot image carries no terms)."""
    h = hashlib.blake2b(digest, digest_size=16)
    h.update(e.index.to_bytes(8, "big"))
    h.update(bytes([int(e.type)]))
    h.update(e.data)
    return h.digest()


def encode_image(index: int, digest: bytes) -> bytes:
    return index.to_bytes(8, "big") + digest


def decode_image(data: bytes) -> tuple[int, bytes]:
    if not data:
        return 0, GENESIS_DIGEST
    if len(data) != 24:
        raise SafetyViolation(f"snapshot data is not a state machine image: {data!r}")
    return int.from_bytes(data[:8], "big"), data[8:]


@dataclass(slots=True)
class Checker:
    traits: Traits
    leaders: dict[int, int] = field(default_factory=dict)
    """term -> the node seen leading it."""
    entry_at: dict[tuple[int, int], tuple[EntryType, bytes]] = field(default_factory=dict)
    prev_term: dict[tuple[int, int], int] = field(default_factory=dict)
    persisted_term: dict[int, int] = field(default_factory=dict)
    persisted_commit: dict[int, int] = field(default_factory=dict)
    votes: dict[tuple[int, int], int] = field(default_factory=dict)
    chosen: dict[int, Entry] = field(default_factory=dict)
    """index -> the entry first applied there (anywhere)."""
    digest_at: dict[int, bytes] = field(default_factory=lambda: {0: GENESIS_DIGEST})
    known_at_term: dict[int, int] = field(default_factory=dict)
    """index -> the highest persisted term when it was first applied (>= its commit term)."""
    value_index: dict[bytes, int] = field(default_factory=dict)
    """client value -> index it was chosen at (an acknowledged proposal)."""
    max_term: int = 0
    max_applied: int = 0
    read_floor: dict[bytes, int] = field(default_factory=dict)
    """read request context -> the highest index applied anywhere when it was made."""
    reads_confirmed: set[bytes] = field(default_factory=set)
    """Contexts of the read requests answered by a ReadState (liveness: schedule.py)."""
    repeatable: Callable[[bytes], bool] | None = None
    """Entry data that may be proposed again (the sharded simulation's admin commands:
    a coordinator repeats one whose outcome it did not see); not a client value."""
    completeness_checked: set[tuple[int, int]] = field(default_factory=set)
    checks: int = 0

    # -- election safety ------------------------------------------------------
    def on_leader(self, node: int, term: int, storage: MemoryStorage) -> None:
        self.checks += 1
        other = self.leaders.setdefault(term, node)
        if other != node:
            raise SafetyViolation(
                f"election safety: nodes {other} and {node} both lead term {term}"
            )
        if self.traits.raft_log and (node, term) not in self.completeness_checked:
            self.completeness_checked.add((node, term))
            self._leader_completeness(node, term, storage)

    def _leader_completeness(self, node: int, term: int, st: MemoryStorage) -> None:
        snap_index = st.snapshot().metadata.index
        last = st.last_index()
        for index, e in self.chosen.items():
            if self.known_at_term[index] >= term or index <= snap_index:
                continue
            if index > last:
                raise SafetyViolation(
                    f"leader completeness: leader {node} of term {term} lacks committed "
                    f"index {index} (its log ends at {last})"
                )
            mine = st.entries(index, index + 1)[0]
            if (mine.term, mine.type, mine.data) != (e.term, e.type, e.data):
                raise SafetyViolation(
                    f"leader completeness: leader {node} of term {term} holds {mine} at "
                    f"index {index}, but {e} was committed there"
                )

    # -- stable storage ---------------------------------------------------------
    def on_hard_state(self, node: int, hs: HardState) -> None:
        self.checks += 1
        last = self.persisted_term.get(node, 0)
        if hs.term < last:
            raise SafetyViolation(f"node {node} persisted term {hs.term} after term {last}")
        self.persisted_term[node] = hs.term
        self.max_term = max(self.max_term, hs.term)
        if not self.traits.raft_log:
            return
        if hs.vote != NONE:
            prior = self.votes.setdefault((node, hs.term), hs.vote)
            if prior != hs.vote:
                raise SafetyViolation(
                    f"node {node} voted for {prior} and then {hs.vote} in term {hs.term}"
                )
        commit = self.persisted_commit.get(node, 0)
        if hs.commit < commit:
            raise SafetyViolation(f"node {node} persisted commit {hs.commit} after {commit}")
        self.persisted_commit[node] = hs.commit

    def on_append(self, node: int, st: MemoryStorage, entries: tuple[Entry, ...]) -> None:
        """Call after ``st.append(entries)``."""
        self.checks += 1
        offset = st.first_index() - 1
        for e in entries:
            if e.index <= offset:
                continue
            key = (e.index, e.term)
            content = (e.type, e.data)
            seen = self.entry_at.setdefault(key, content)
            if seen != content:
                raise SafetyViolation(
                    f"node {node} stored {content} at index {e.index} term {e.term}, "
                    f"but {seen} was stored there before"
                )
            if not self.traits.raft_log or e.term == 0:
                continue
            try:
                pt = st.term(e.index - 1)
            except (CompactedError, UnavailableError):
                continue
            prior = self.prev_term.setdefault(key, pt)
            if prior != pt:
                raise SafetyViolation(
                    f"log matching: node {node} has (index {e.index}, term {e.term}) after "
                    f"term {pt}, another log has it after term {prior}"
                )

    def full_log_matching(self, storages: dict[int, MemoryStorage]) -> None:
        """Pairwise scan: where two stable logs share (index, term), they agree below."""
        if not self.traits.raft_log:
            return
        self.checks += 1
        logs = {n: _log_of(st) for n, st in storages.items()}
        ids = sorted(logs)
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                la, lb = logs[a], logs[b]
                common = sorted(set(la) & set(lb), reverse=True)
                matched = False
                for index in common:
                    if la[index].term == lb[index].term:
                        matched = True
                    if matched and la[index] != lb[index]:
                        raise SafetyViolation(
                            f"log matching: nodes {a} and {b} share a later (index, term) "
                            f"but differ at index {index}: {la[index]} vs {lb[index]}"
                        )

    # -- state machine ------------------------------------------------------------
    def on_install(self, node: int, snap: Snapshot, applied: int) -> None:
        """A snapshot replaced node's state machine (applied index was ``applied``)."""
        self.checks += 1
        index = snap.metadata.index
        img_index, digest = decode_image(snap.data)
        if img_index != index:
            raise SafetyViolation(
                f"node {node} installed a snapshot at {index} holding an image of {img_index}"
            )
        if index < applied:
            raise SafetyViolation(
                f"node {node} installed a snapshot at {index}, rolling back applied {applied}"
            )
        self._agree(node, index, digest)

    def on_apply(
        self, node: int, e: Entry, applied: int, digest: bytes, durable_commit: int
    ) -> None:
        """``applied`` is the node's index before ``e``; ``digest`` its digest after."""
        self.checks += 1
        if e.index != applied + 1:
            raise SafetyViolation(
                f"node {node} applied index {e.index} right after {applied} (must be contiguous)"
            )
        if e.index > durable_commit:
            raise SafetyViolation(
                f"node {node} applied index {e.index} beyond its durable commit {durable_commit}"
            )
        # The floor a later read-index must reach (linearizable reads see every applied entry).
        self.max_applied = max(self.max_applied, e.index)
        first = self.chosen.get(e.index)
        if first is None:
            self.chosen[e.index] = e
            self.known_at_term[e.index] = self.max_term
        elif self._identity(first) != self._identity(e):
            raise SafetyViolation(
                f"state machine safety: node {node} applied {e} at index {e.index}, "
                f"another node applied {first}"
            )
        if (
            e.type == EntryType.NORMAL
            and e.data
            and not (self.repeatable and self.repeatable(e.data))
        ):
            at = self.value_index.setdefault(e.data, e.index)
            if at != e.index:
                raise SafetyViolation(f"value {e.data!r} chosen at index {at} and at {e.index}")
        self._agree(node, e.index, digest)

    def on_read_request(self, ctx: bytes) -> None:
        self.read_floor[ctx] = self.max_applied

    def on_read_state(self, node: int, rs: ReadState) -> None:
        self.checks += 1
        self.reads_confirmed.add(rs.request_ctx)
        floor = self.read_floor.get(rs.request_ctx)
        if floor is not None and rs.index < floor:
            raise SafetyViolation(
                f"stale read: node {node} got read index {rs.index} for {rs.request_ctx!r}, "
                f"but index {floor} was applied before the read was requested"
            )

    @staticmethod
    def _identity(e: Entry) -> tuple[int, EntryType, bytes]:
        # Paxos too: a committed entry carries the ballot that first proposed it (types.py).
        return (e.term, e.type, e.data)

    def _agree(self, node: int, index: int, digest: bytes) -> None:
        seen = self.digest_at.setdefault(index, digest)
        if seen != digest:
            raise SafetyViolation(
                f"state machine safety: node {node}'s state at index {index} differs from "
                f"another node's (its applied history diverged)"
            )

    def check_converged(self, states: dict[int, tuple[int, bytes]]) -> None:
        """End of run: all members applied the same history, holding every acknowledged value."""
        self.checks += 1
        indexes = {index for index, _ in states.values()}
        if len(indexes) != 1:
            raise SafetyViolation(f"members did not converge: applied indexes {states}")
        index = indexes.pop()
        top = max(self.value_index.values(), default=0)
        if index < top:
            raise SafetyViolation(
                f"acknowledged value at index {top} lost: members applied only up to {index}"
            )
        for node, (_, digest) in states.items():
            self._agree(node, index, digest)


def _log_of(st: MemoryStorage) -> dict[int, Entry]:
    first, last = st.first_index(), st.last_index()
    if last < first:
        return {}
    return {e.index: e for e in st.entries(first, last + 1)}
