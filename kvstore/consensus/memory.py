"""MemoryStorage: the in-memory twin of the stable log (performs no I/O).

Used by transcripts, the simulator and unit tests in place of the LMDB log.
Invariant: ``self._ents[0]`` is a dummy entry at the snapshot's index and term,
so ``term(first_index() - 1)`` is always answerable and entries are contiguous.
``conf_state`` is the membership as of the applied index (the driver records it with
``set_conf_state`` when it applies a conf change), which is what a restarted core must
start from; the snapshot's may be older.
"""

from __future__ import annotations

from kvstore.consensus.types import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
    has_membership,
    limit_size,
)


class MemoryStorage:
    def __init__(self, voters: frozenset[int] | set[int] = frozenset()) -> None:
        """``voters``: the bootstrap membership, recorded as a snapshot at index 0."""
        self.hard_state = HardState()
        self._snapshot = Snapshot(
            metadata=SnapshotMetadata(conf_state=ConfState(voters=frozenset(voters)))
        )
        self._ents: list[Entry] = [Entry(term=0, index=0)]
        self.conf_state = self._snapshot.metadata.conf_state

    # -- LogStorage --------------------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self.conf_state

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def term(self, index: int) -> int:
        offset = self._ents[0].index
        if index < offset:
            raise CompactedError(f"index {index} compacted (first is {offset + 1})")
        if index - offset >= len(self._ents):
            raise UnavailableError(f"index {index} past last {self.last_index()}")
        return self._ents[index - offset].term

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        offset = self._ents[0].index
        if lo <= offset:
            raise CompactedError(f"index {lo} compacted (first is {offset + 1})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"index {hi - 1} past last {self.last_index()}")
        return limit_size(self._ents[lo - offset : hi - offset], max_size)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- writes (the driver's side) -----------------------------------------
    def set_hard_state(self, hs: HardState) -> None:
        self.hard_state = hs

    def set_conf_state(self, cs: ConfState) -> None:
        """Record the membership after applying a conf change."""
        self.conf_state = cs

    def append(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        """Append, truncating any conflicting suffix first (Ready.entries rule)."""
        if not entries:
            return
        first = entries[0].index
        offset = self._ents[0].index
        if first <= offset:
            # Entries already covered by the snapshot are dropped.
            entries = [e for e in entries if e.index > offset]
            if not entries:
                return
            first = entries[0].index
        if first > self.last_index() + 1:
            raise ValueError(f"gap: appending {first} after last {self.last_index()}")
        del self._ents[first - offset :]
        self._ents.extend(entries)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log by the snapshot (InstallSnapshot on a follower). One at
        index 0 only gives a joiner its base membership (the join contract, types.py)."""
        if snap.metadata.index == 0 and not has_membership(self._snapshot.metadata.conf_state):
            # (our own snapshot is at 0 too: one with a later index has a membership)
            self._snapshot = snap
            if not has_membership(self.conf_state):
                self.conf_state = snap.metadata.conf_state
            return
        if snap.metadata.index <= self._snapshot.metadata.index:
            return
        self._snapshot = snap
        self.conf_state = snap.metadata.conf_state
        self._ents = [Entry(term=snap.metadata.term, index=snap.metadata.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a state machine image at ``index`` (<= last index)."""
        if index <= self._snapshot.metadata.index:
            return self._snapshot
        if index > self.last_index():
            raise UnavailableError(f"snapshot index {index} past last {self.last_index()}")
        meta = SnapshotMetadata(index=index, term=self.term(index), conf_state=conf_state)
        self._snapshot = Snapshot(metadata=meta, data=data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries up to and including ``index`` (must be <= a snapshot'd index
        for a restart to recover; the caller keeps that rule)."""
        offset = self._ents[0].index
        if index <= offset:
            return
        if index > self.last_index():
            raise UnavailableError(f"compact index {index} past last {self.last_index()}")
        self._ents = [
            Entry(term=self._ents[index - offset].term, index=index),
            *self._ents[index - offset + 1 :],
        ]
