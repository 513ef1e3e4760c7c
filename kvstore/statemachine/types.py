"""Values the state machine hands out: KeyValue (etcd's mvccpb.KeyValue) and ApplyResult.

Invariant: both are immutable; ``revision`` of a write is the log index of the entry
that carried it plus the shard's revision offset (0 until a merge; per shard, monotonic,
see kvstore.shard.merging), so ``mod_revision <= applied index + offset`` always.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    version: int
    """Writes since the key was (re)created: 1 after the first put; a delete ends the key."""
    create_revision: int
    """Revision (log index) of the put that created the key."""
    mod_revision: int
    """Revision (log index) of the last write to the key."""


class ApplyError(enum.IntEnum):
    """Why a command was not evaluated (``ok`` is then False and nothing changed)."""

    NONE = 0
    SESSION_EXPIRED = 1
    """The (client_id, seq) is older than the session window: it may have applied once
    already and its result is forgotten, so it is neither applied nor answered."""
    KEY_TOO_LARGE = 2
    """The key is longer than MAX_KEY_SIZE (the node should reject it before proposing)."""
    WRONG_SHARD = 3
    """The key is outside the group's range at apply time (a split or merge committed
    between routing and apply): nothing applied and no session record, so the client's
    retry to the right shard applies it exactly once."""
    LEASE_NOT_FOUND = 4
    """The lease named (a keep-alive's, a revoke's, a write's) is not held by the group."""
    LEASE_EXISTS = 5
    """A grant named a lease id the group already holds."""
    LEASE_INVALID = 6
    """A grant with an id or TTL outside the bounds (the node checks before proposing)."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The outcome of one command.

    ``prev`` is the key before the command and ``kv`` after it (None = absent), for
    every command kind: a failed Cas has ``kv == prev``; a Delete has ``kv is None``.
    """

    index: int
    """Log index of the entry that carried the command."""
    revision: int
    """Store revision the answer reflects: ``index`` plus the shard's revision offset
    (one revision per entry)."""
    ok: bool
    """Put: always True. Delete: the key existed. Cas: the comparison held."""
    prev: KeyValue | None
    kv: KeyValue | None
    error: ApplyError = ApplyError.NONE
    time: int = field(default=0, compare=False)
    """The entry's time (the causal token of the answer, apply.py); 0: not known. Not
    stored with a session's outcome (a replayed answer takes its retry entry's time),
    nor compared: it does not change the outcome."""
    ttl_ms: int = field(default=0, compare=False)
    """A lease keep-alive's: the lease's TTL (the answer may be built before the apply's
    transaction commits, so it cannot be read back from storage)."""
