"""Quiescence: idle groups of a sharded node stop ticking (no heartbeats, no timers).

Rules this module keeps (CockroachDB's quiescence, in the driver; the cores are untouched):
- Ticks only drive liveness (heartbeats, election and check-quorum timers), never safety,
  so not ticking a group can delay an election but cannot break an invariant: a leader
  that stopped ticking still needs a quorum round for every write and strong read.
- A group ticks while it has any work (a queued or in-flight write, read, conf change or
  admin command), and for QUIET_AFTER_TICKS ticks after its last activity: a message
  other than a heartbeat, or a Ready with entries, commits or a role change.
- After that a leader stops ticking once its log is committed and applied and every
  member has the whole log by the leader's progress (``status(progress=True)``; both
  cores report it); a follower stops ticking while its leader's node is alive by the
  failure detector (node-level heartbeats keep flowing on the peer streams). A suspect
  leader node, a vote request or any write or read wakes the group at once.
- A quiet group stays quiet until something wakes it (``touch``); deciding so costs a
  set lookup (and a liveness lookup for a follower) per tick, never a core call.
"""

from __future__ import annotations

from collections.abc import Callable

from kvstore.consensus.types import Message, MessageType, Ready, Role
from kvstore.node.pending import GroupState

QUIET_AFTER_TICKS = 40
"""Two seconds at the default 50 ms tick: several heartbeat rounds carry the final commit
index to every follower before the leader goes quiet."""

_QUIET_TYPES = frozenset(
    {
        MessageType.HEARTBEAT,
        MessageType.HEARTBEAT_RESP,
        MessageType.PAXOS_HEARTBEAT,
        MessageType.PAXOS_HEARTBEAT_RESP,
    }
)


class Quiescence:
    def __init__(self, enabled: bool, peer_alive: Callable[[int], bool] | None = None) -> None:
        self.enabled = enabled
        self.peer_alive: Callable[[int], bool] = peer_alive or (lambda n: False)
        self.now = 0
        """Ticks seen so far."""
        self._active: dict[int, int] = {}
        self.quiet: set[int] = set()
        """Groups not ticking now (status and tests read it)."""

    def touch(self, group: int) -> None:
        self._active[group] = self.now
        self.quiet.discard(group)

    def on_message(self, m: Message) -> None:
        if m.type not in _QUIET_TYPES:
            self.touch(m.group)

    def on_ready(self, group: int, rd: Ready) -> None:
        if rd.entries or rd.committed or rd.soft_state is not None or rd.snapshot is not None:
            self.touch(group)

    def should_tick(self, g: GroupState) -> bool:
        if not self.enabled:
            return True
        if (
            g.writes
            or g.inflight
            or g.reads
            or g.read_ctx
            or g.applied_waiters
            or g.confs
            or g.conf_inflight
            or g.admin
            or g.admin_inflight
        ):
            self.touch(g.id)
            return True
        if g.id in self.quiet:
            # Nothing woke it (touch() would have): a quiet leader stays quiet without
            # asking its core again, so an idle group costs a few lookups a tick.
            if g.role == Role.LEADER or (g.leader and self.peer_alive(g.leader)):
                return False
            self.touch(g.id)
            return True
        if self.now - self._active.setdefault(g.id, self.now) < QUIET_AFTER_TICKS:
            return True
        if g.role == Role.LEADER:
            st = g.core.status(progress=True)
            # Every member must hold the whole log: a lagging member of a quiet leader
            # would hear nothing and never catch up. (A core that reported no progress
            # would keep its leader ticking.)
            quiet = (
                bool(st.progress)
                and st.commit == st.last_index
                and g.applied >= st.commit
                and all(p.match >= st.last_index for p in st.progress)
            )
        else:
            quiet = g.role in (Role.FOLLOWER, Role.LEARNER) and bool(
                g.leader and self.peer_alive(g.leader)
            )
        if quiet:
            self.quiet.add(g.id)
        else:
            self.touch(g.id)
        return not quiet
