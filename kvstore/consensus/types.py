"""The consensus contract shared by the Raft and Multi-Paxos cores.

Rule of this package: it performs no I/O. No asyncio, grpc, lmdb, time, socket,
threading or the global ``random`` module may be imported under
``kvstore.consensus``; time is ticks and randomness is a ``random.Random`` the
caller passes in (tests/test_purity.py enforces this).

A core is driven like etcd-io/raft's RawNode:

    core.tick() / core.step(msg) / core.propose(data) / core.read_index(ctx) ...
    if core.has_ready():
        rd = core.ready()
        persist(rd.hard_state, rd.entries, rd.snapshot)   # durably, one fsync
        send(rd.messages)                                   # only after the persist
        apply(rd.committed); serve(rd.read_states)
        core.advance(rd)

Errors are split by who is at fault: the local caller gets an exception
(``ConsensusError`` subclasses); a bad, stale or duplicated remote message is
dropped and counted in ``core.dropped`` and never raises.

The join contract (both cores keep it). A node started to join a running group
(``kvstore serve --join``) has no membership: its ConfState has no voters and no
learners (``has_membership`` is False). Conf-change entries replayed onto that empty
base would give it a wrong membership (e.g. itself as the only voter), so until it
has installed a snapshot, which carries the membership as of its index:
- it never campaigns (it cannot count a quorum) and takes no entries into its log,
  nor a commit index, even if a pending conf change in its log names it a voter;
- it refuses every replication request (Raft APPEND, Paxos ACCEPT) with a reject at
  index 0 (Paxos marks it with context ``JOINING``: a REACCEPT may be refused at 0);
- a leader answers such a reject with its snapshot even when its log is not
  compacted (the one at index 0 carries the genesis membership and no data), and
  the joiner adopts the snapshot's membership even at index 0. The driver persists
  ``Ready.snapshot`` as always; one at index 0 records only its membership.
It may still answer votes and promises: an empty log answers them truthfully.
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

NONE = 0
"""Node id meaning "nobody" (no vote, no known leader). Real node ids are >= 1."""


class EntryType(enum.IntEnum):
    NORMAL = 0
    """Client data (``Entry.data`` is an opaque command for the state machine)."""
    CONF_CHANGE = 1
    """``Entry.data`` is an encoded ``ConfChange``; apply with ``apply_conf_change``."""
    NOOP = 2
    """Written by a new leader (Raft) or to fill a gap (Paxos); carries no data."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    term: int
    """Raft: the leader term that created the entry. Paxos: in the log, the ballot that
    accepted the value; in ``Ready.committed``, the ballot that first proposed it (so a
    ProposalId still matches after a new leader re-proposes the value)."""
    index: int
    """Log position (Raft) or slot (Paxos), starting at 1."""
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Approximate encoded size in bytes, used for flow control caps."""
        return len(self.data) + 24


def limit_size(entries: Sequence[Entry], max_size: int | None) -> list[Entry]:
    """The LogStorage.entries size rule: the first entry always, then as many more as fit
    in ``max_size`` bytes (None: no limit)."""
    if max_size is None or not entries:
        return list(entries)
    size = entries[0].size()
    n = 1
    while n < len(entries) and size + entries[n].size() <= max_size:
        size += entries[n].size()
        n += 1
    return list(entries[:n])


class ConfChangeType(enum.IntEnum):
    ADD_NODE = 0
    """Add a voter (or promote a learner to voter)."""
    REMOVE_NODE = 1
    ADD_LEARNER = 2
    """Add a non-voting member that receives the log; promote later with ADD_NODE.
    Raft: on a voter, demotes it to a learner."""
    JOINT = 3
    """Raft only: apply every change in ``changes`` at once through a joint configuration
    (C_old,new; etcd's ConfChangeV2). The leader leaves it on its own (LEAVE_JOINT) once
    it is applied. Multi-Paxos refuses it (one member at a time)."""
    LEAVE_JOINT = 4
    """Raft only: leave the joint configuration for its incoming half (proposed by the
    leader itself, as etcd's auto-leave)."""


SINGLE_CHANGES = frozenset(
    {ConfChangeType.ADD_NODE, ConfChangeType.REMOVE_NODE, ConfChangeType.ADD_LEARNER}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfChange:
    type: ConfChangeType
    node_id: int = 0
    context: bytes = b""
    """Opaque to the cores (etcd's ConfChange.Context): the driver puts the node's
    address here, so every member learns it when the change applies."""
    changes: tuple[ConfChange, ...] = ()
    """JOINT: the single changes (ADD_NODE, REMOVE_NODE, ADD_LEARNER) made together."""

    def singles(self) -> tuple[ConfChange, ...]:
        """The single changes this one makes: itself, a JOINT's parts, none to leave."""
        if self.type is ConfChangeType.JOINT:
            return self.changes
        return () if self.type is ConfChangeType.LEAVE_JOINT else (self,)

    def encode(self) -> bytes:
        head = bytes([int(self.type)]) + self.node_id.to_bytes(8, "big")
        if self.type is not ConfChangeType.JOINT:
            return head + self.context
        return head + b"".join(
            len(c).to_bytes(4, "big") + c for c in map(ConfChange.encode, self.changes)
        )

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        if len(data) < 9:
            raise ValueError(f"conf change must be at least 9 bytes, got {len(data)}")
        kind = ConfChangeType(data[0])
        node_id = int.from_bytes(data[1:9], "big")
        if kind is not ConfChangeType.JOINT:
            return ConfChange(type=kind, node_id=node_id, context=bytes(data[9:]))
        changes, at = [], 9
        while at < len(data):
            n = int.from_bytes(data[at : at + 4], "big")
            if at + 4 + n > len(data):
                raise ValueError("joint conf change truncated")
            part = ConfChange.decode(data[at + 4 : at + 4 + n])
            if part.type not in SINGLE_CHANGES:
                raise ValueError("a joint conf change holds single changes only")
            changes.append(part)
            at += 4 + n
        return ConfChange(type=kind, node_id=node_id, changes=tuple(changes))


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfState:
    """Membership. Invariant: ``voters`` and ``learners`` are disjoint.

    ``voters_outgoing`` is non-empty only while a joint configuration
    (C_old,new) is in effect; decisions then need a majority of both sets. A node in
    both ``voters_outgoing`` and ``learners`` is a voter being demoted: it votes in the
    outgoing half and becomes a plain learner when the joint configuration is left
    (etcd's learners_next).
    """

    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()
    voters_outgoing: frozenset[int] = frozenset()


def has_membership(cs: ConfState) -> bool:
    """False for a node that joined and has not yet installed a snapshot (the join
    contract in the module docstring)."""
    return bool(cs.voters or cs.learners or cs.voters_outgoing)


JOINING = b"joining"
"""Context of a Paxos ACCEPTED reject at index 0 from a node with no membership: "send
me a snapshot" (the join contract)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HardState:
    """What a node must persist before it answers anything that depends on it.

    Raft: current term, vote in that term, commit index.
    Paxos: ``term`` is the promised ballot, ``vote`` unused, ``commit`` the
    highest slot known chosen contiguously.
    """

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotMetadata:
    index: int = 0
    """Last log index the snapshot covers."""
    term: int = 0
    """Term of the entry at ``index``."""
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)
    data: bytes = b""
    """The state machine image at ``metadata.index`` (opaque to the core)."""

    def is_empty(self) -> bool:
        return self.metadata.index == 0


class MessageType(enum.IntEnum):
    # Raft (thesis names; etcd-io/raft's MsgApp, MsgVote ...)
    APPEND = 1
    APPEND_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9
    """InstallSnapshot; ``snapshot`` holds the image."""
    TIMEOUT_NOW = 10
    """Leadership transfer: the target campaigns at once."""
    READ_INDEX = 11
    """A follower forwarding a read-index request to the leader."""
    READ_INDEX_RESP = 12
    # Multi-Paxos ("Paxos Made Moderately Complex" names)
    PREPARE = 20
    """Phase 1a for every slot from ``index`` on, with ballot ``term``."""
    PROMISE = 21
    """Phase 1b: ``entries`` are the accepted values from ``index`` on."""
    ACCEPT = 22
    """Phase 2a: ``entries`` proposed in ballot ``term``."""
    ACCEPTED = 23
    """Phase 2b: accepted up to ``index``."""
    PAXOS_SNAPSHOT = 24
    PAXOS_HEARTBEAT = 25
    PAXOS_HEARTBEAT_RESP = 26
    PAXOS_TIMEOUT_NOW = 27
    # Node level (the driver handles it; cores never see it)
    TIME_REQUEST = 40
    """A replica asks its group's leader for an entry stamped at or above ``index`` (a
    hybrid clock time a causal read waits for, kvstore/node/hlc.py)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One node-to-node message; the field meanings follow etcd-io/raft's raftpb.Message.

    Every message names its consensus ``group`` so one node hosts many groups
    over one connection per peer.
    """

    type: MessageType
    group: int
    from_: int
    to: int
    term: int = 0
    """Sender's term (Raft) or ballot (Paxos)."""
    log_term: int = 0
    """Raft APPEND: term of the entry at ``index`` (prev log term). VOTE: last log term."""
    index: int = 0
    """APPEND: prev log index. APPEND_RESP: last matched index (or rejected index)."""
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    """On a rejected APPEND: the follower's hint for fast backtracking."""
    snapshot: Snapshot | None = None
    context: bytes = b""
    """Opaque: read-index request contexts, campaign kind (transfer) ..."""


class Role(enum.IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3
    LEARNER = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class SoftState:
    """Volatile state that need not be persisted; present in Ready when it changed."""

    leader: int = NONE
    role: Role = Role.FOLLOWER


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadState:
    """A confirmed read: once ``applied >= index`` the read with ``request_ctx`` may be served."""

    index: int
    request_ctx: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ProposalId:
    """Where a proposal landed. It committed iff the entry applied at ``index`` has ``term``."""

    term: int
    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    """One batch of effects. The caller must act on the fields in this order."""

    soft_state: SoftState | None = None
    """Changed leader or role, if any; informational, no ordering constraint."""
    hard_state: HardState | None = None
    """Persist durably before sending ``messages`` (None: unchanged)."""
    entries: tuple[Entry, ...] = ()
    """Append to the log durably before sending ``messages``. An entry at an
    index already in the stored log replaces it and everything after it."""
    snapshot: Snapshot | None = None
    """Install (state machine image + log reset) durably before sending ``messages``,
    before appending ``entries`` (which follow it) and before applying ``committed``."""
    messages: tuple[Message, ...] = ()
    """Send only after ``hard_state``, ``entries`` and ``snapshot`` are durable."""
    committed: tuple[Entry, ...] = ()
    """Durable on a quorum: apply in index order. May be applied concurrently with
    the persist above (they are already durable elsewhere) but never skipped."""
    read_states: tuple[ReadState, ...] = ()
    """Confirmed read indexes; serve each once the state machine has applied its index."""

    def is_empty(self) -> bool:
        return not (
            self.soft_state
            or self.hard_state
            or self.entries
            or self.snapshot
            or self.messages
            or self.committed
            or self.read_states
        )


class ConsensusError(Exception):
    """Local misuse of a core (never raised for a bad remote message)."""


class NotLeaderError(ConsensusError):
    """The call needs the leader; ``leader`` is the best known hint (NONE if unknown)."""

    def __init__(self, leader: int) -> None:
        super().__init__(f"not the leader (leader hint: {leader})")
        self.leader = leader


class ProposalDroppedError(ConsensusError):
    """The proposal cannot be accepted now (leadership transfer in flight, too many
    uncommitted bytes, a conf change already pending)."""


class LogStorage(Protocol):
    """The stable log a core reads from (etcd-io/raft's Storage).

    The driver writes to it after persisting each Ready; the core only reads.
    ``MemoryStorage`` is the in-memory twin; kvstore.storage has the LMDB one.
    Invariant: entries are contiguous from ``first_index()`` to ``last_index()``.
    """

    def initial_state(self) -> tuple[HardState, ConfState]: ...

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries in [lo, hi); at least one if any, then up to ``max_size`` bytes.
        Raises CompactedError if lo < first_index()."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index``; the snapshot's term for first_index()-1.
        Raises CompactedError below that, UnavailableError above last_index()."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot: ...


class CompactedError(ConsensusError):
    """The requested index was compacted into a snapshot."""


class UnavailableError(ConsensusError):
    """The requested index is past the end of the log."""


@dataclass(slots=True, kw_only=True)
class Config:
    """Parameters of a core. ``rng`` is the only source of randomness."""

    id: int
    group: int = 0
    election_tick: int = 10
    """Followers campaign after a random timeout in [election_tick, 2*election_tick) ticks."""
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_size_per_msg: int = 1 << 20
    max_inflight_msgs: int = 256
    """Cap on in-flight APPENDs per follower in the replicate state."""
    max_inflight_bytes: int = 16 << 20
    max_uncommitted_bytes: int = 64 << 20
    applied: int = 0
    """Index the state machine has applied on restart (entries up to it are not re-emitted)."""
    rng: random.Random = field(default_factory=lambda: random.Random(0))


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerProgress:
    """A leader's view of one member's replication (etcd's tracker.Progress)."""

    id: int
    match: int
    """Highest index known stored on the member."""
    next: int
    """Next index the leader will send it."""
    state: str
    """"probe" (finding where its log ends), "replicate" (streaming) or "snapshot"."""
    inflight: int
    """Appends sent and not yet acknowledged."""
    learner: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    id: int
    group: int
    role: Role
    term: int
    leader: int
    commit: int
    applied: int
    last_index: int
    conf_state: ConfState
    progress: tuple[PeerProgress, ...] = ()
    """With ``status(progress=True)`` on a leader: every member's replication progress,
    by id; empty otherwise (and from a core that does not track it)."""


class Core(Protocol):
    """What the node driver, the simulator and the tests use; Raft and Paxos implement it."""

    dropped: Counter[str]
    """Remote messages dropped, by reason (e.g. "stale_term", "unknown_group")."""

    def tick(self) -> None: ...

    def step(self, msg: Message) -> None: ...

    def propose(self, data: bytes) -> ProposalId:
        """Raises NotLeaderError or ProposalDroppedError."""
        ...

    def propose_conf_change(self, change: ConfChange) -> ProposalId: ...

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        """Call when a CONF_CHANGE entry is applied; returns the new membership."""
        ...

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read; a ReadState with ``ctx`` appears in a later Ready.
        On a follower the request is forwarded to the leader. Raises NotLeaderError when
        no leader is known."""
        ...

    def transfer_leadership(self, to: int) -> None: ...

    def report_unreachable(self, peer: int) -> None:
        """The transport failed to send a message to ``peer`` (etcd's ReportUnreachable):
        a leader stops streaming to it and probes once it answers. Never required."""
        ...

    def report_snapshot(self, peer: int, ok: bool) -> None:
        """The transport delivered (``ok``) or lost the snapshot message sent to ``peer``
        (etcd's ReportSnapshot): a leader stops waiting for it. Never required."""
        ...

    def campaign(self) -> None:
        """Start an election now (tests and bootstrap)."""
        ...

    def has_ready(self) -> bool: ...

    def ready(self) -> Ready: ...

    def advance(self, rd: Ready) -> None: ...

    def status(self, *, progress: bool = False) -> Status:
        """``progress``: also fill ``Status.progress`` (a leader's view of each member;
        built on demand, as status() is called often)."""
        ...
