"""Ballot numbers: a (round, node id) pair packed into one int (performs no I/O).

A ballot travels in ``Message.term`` and is persisted as ``HardState.term`` (the
promise) and ``Entry.term`` (the ballot an acceptor accepted a slot's value in),
so it must be a single non-negative int that orders like the pair:

    ballot = round << NODE_BITS | node_id        (NODE_BITS = 16)

Invariant: for node ids below ``1 << NODE_BITS``, ``a < b`` as ints iff
``(round(a), node(a)) < (round(b), node(b))`` lexicographically, and two nodes
never own the same ballot. Ballot 0 (``NO_BALLOT``) is below every real ballot:
"nothing promised" / "nothing accepted".
"""

from __future__ import annotations

NODE_BITS = 16
MAX_NODE_ID = (1 << NODE_BITS) - 1
NO_BALLOT = 0


def make(round_: int, node: int) -> int:
    """The ballot of ``node`` in ``round_``; raises ValueError outside the encodable range."""
    if round_ < 0:
        raise ValueError(f"ballot round must be >= 0, got {round_}")
    if not 1 <= node <= MAX_NODE_ID:
        raise ValueError(f"node id must be in [1, {MAX_NODE_ID}] for Paxos ballots, got {node}")
    return round_ << NODE_BITS | node


def round_of(ballot: int) -> int:
    return ballot >> NODE_BITS


def node_of(ballot: int) -> int:
    """The proposer that owns ``ballot`` (0 for ``NO_BALLOT``)."""
    return ballot & MAX_NODE_ID


def next_after(seen: int, node: int) -> int:
    """The smallest ballot owned by ``node`` that is above ``seen``."""
    return make(round_of(seen) + 1, node)


def is_valid(ballot: int) -> bool:
    """A real ballot: non-negative and owned by some node (node field != 0)."""
    return ballot > 0 and node_of(ballot) != 0


def fmt(ballot: int) -> str:
    """Human form for transcripts and logs: ``round.node``."""
    return f"{round_of(ballot)}.{node_of(ballot)}"
