"""Strong reads (read_index) in the simulation, and the rule that each one is answered.

Liveness rule for reads (checked by schedule.py after the faults heal): a read request
is answered (a ReadState with its context) unless it went *stale*: the node it was made
at crashed, or changed term or known leader since. A stale request is one the real
driver fails with NotLeader/Unavailable and the client retries; a live one must not
wait forever. So after healing:
- a read made at a leader before healing that is still live must be confirmed within
  the operation bound (its heartbeat round may have been lost to the faults: the core
  must retry it, not wait for a later read);
- every read made after healing is retried while stale and confirmed within the
  operation bound of its first issue.
Safety of the answers (no stale read index) is the checker's ``on_read_state``.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from kvstore.consensus.types import ConsensusError, Role

from .checkers import Checker
from .cluster import Cluster, SimNode


@dataclass(frozen=True, slots=True)
class ReadAttempt:
    ctx: bytes
    node: int
    boots: int
    """The node's boot count at issue: a restart loses every pending request."""
    term: int
    leader: int
    """Who the node believed led when asked (itself for a leader read)."""


class Reads:
    def __init__(self, cluster: Cluster, checker: Checker, rng: random.Random) -> None:
        self.cluster = cluster
        self.checker = checker
        self.rng = rng
        self.counter = 0
        self.at_leader: list[ReadAttempt] = []
        """Reads made at a leader before healing (the ones a lost round must not strand)."""
        self.healed = False
        """Set at healing: later reads are tracked by the liveness loop itself."""
        self.stats: Counter[str] = Counter()

    def issue(self, node: SimNode) -> ReadAttempt | None:
        """Ask ``node`` for a linearizable read; None when it refused at once."""
        core = node.core
        if core is None:
            return None
        self.counter += 1
        ctx = b"r-%d" % self.counter
        s = core.status()
        self.checker.on_read_request(ctx)
        try:
            core.read_index(ctx)
        except (ConsensusError, NotImplementedError):
            self.stats["read_refused"] += 1
            return None
        self.stats["read_requests"] += 1
        a = ReadAttempt(ctx, node.id, node.boots, s.term, s.leader)
        if s.role == Role.LEADER and not self.healed:
            self.at_leader.append(a)
        return a

    def issue_random(self) -> ReadAttempt | None:
        """A read at the leader half the time (the reads a lost round can strand), else
        at a random live member (followers forward it to their leader; a removed node
        hears from no leader, and its reads only time out, in the sim as in a driver)."""
        c = self.cluster
        leader = c.leader()
        if leader and self.rng.random() < 0.5:
            return self.issue(c.nodes[leader])
        members = c.members()
        up = [n for n in c.up_nodes() if n.id in members]
        return self.issue(self.rng.choice(up)) if up else None

    def confirmed(self, a: ReadAttempt) -> bool:
        return a.ctx in self.checker.reads_confirmed

    def stale(self, a: ReadAttempt) -> bool:
        node = self.cluster.nodes.get(a.node)
        if node is None or node.core is None or node.boots != a.boots:
            return True
        s = node.core.status()
        return s.term != a.term or s.leader != a.leader

    def pending_at_leader(self) -> list[ReadAttempt]:
        """Leader reads neither answered nor stale (each must be answered in time)."""
        self.at_leader = [a for a in self.at_leader if not self.confirmed(a) and not self.stale(a)]
        return self.at_leader
