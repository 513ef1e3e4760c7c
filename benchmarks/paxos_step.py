"""Messages per second through ``PaxosNode.step`` on one Multi-Paxos core (no I/O).

    python benchmarks/paxos_step.py [--n 20000] [--repeat 3]

The same cases as benchmarks/core_step.py (Raft), so the two cores compare directly.
Each times only ``step``; Readies are drained and persisted to MemoryStorage between
batches, untimed:
- acceptor ACCEPT, 1 value per message
- acceptor ACCEPT, 64 values per message (also reported as values/s)
- leader ACCEPTED (two acceptors acknowledging each new slot; commit advances)
- leader PAXOS_HEARTBEAT_RESP
"""

from __future__ import annotations

import argparse
import random

# Same directory: the drain/time/report loop is shared with the Raft benchmark.
from core_step import Case, drain, report, timed

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.paxos import PaxosNode, value
from kvstore.consensus.paxos import ballot as ballots
from kvstore.consensus.types import Config, EntryType, Message, MessageType

MT = MessageType
DATA = b"x" * 256
B1 = ballots.make(1, 1)


def acceptor_accept(count: int, per_msg: int) -> tuple[float, int]:
    st = MemoryStorage(voters={1, 2, 3})
    n = PaxosNode(Config(id=2, rng=random.Random(2)), st)
    msgs, idx = [], 0
    for _ in range(count):
        ents = tuple(
            value.new_value(B1, idx + k + 1, DATA, EntryType.NORMAL) for k in range(per_msg)
        )
        msgs.append(
            Message(
                type=MT.ACCEPT, group=0, from_=1, to=2, term=B1, index=idx, entries=ents, commit=idx
            )
        )
        idx += per_msg
    return timed(msgs, n, st), count


def leader(count: int) -> tuple[PaxosNode, MemoryStorage]:
    st = MemoryStorage(voters={1, 2, 3})
    n = PaxosNode(Config(id=1, rng=random.Random(1)), st)
    n.campaign()
    drain(n, st)
    n.step(Message(type=MT.PROMISE, group=0, from_=2, to=1, term=B1, index=1))
    drain(n, st)
    for _ in range(count):
        n.propose(DATA)
    drain(n, st)
    drain(n, st)
    return n, st


def leader_accepted(count: int) -> tuple[float, int]:
    n, st = leader(count)
    msgs = [
        Message(type=MT.ACCEPTED, group=0, from_=f, to=1, term=B1, index=i + 1)
        for i in range(count)
        for f in (2, 3)
    ]
    return timed(msgs, n, st), len(msgs)


def leader_heartbeat_resp(count: int) -> tuple[float, int]:
    n, st = leader(1)
    for f in (2, 3):  # acceptors caught up: the steady state between proposals
        n.step(Message(type=MT.ACCEPTED, group=0, from_=f, to=1, term=B1, index=1))
    drain(n, st)
    msgs = [
        Message(type=MT.PAXOS_HEARTBEAT_RESP, group=0, from_=2 + i % 2, to=1, term=B1, index=1)
        for i in range(count)
    ]
    return timed(msgs, n, st), count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="messages per case")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the best is shown")
    args = ap.parse_args()
    cases: list[Case] = [
        ("acceptor ACCEPT (1 value)", lambda: acceptor_accept(args.n, 1), 1),
        ("acceptor ACCEPT (64 values)", lambda: acceptor_accept(args.n // 16, 64), 64),
        ("leader ACCEPTED", lambda: leader_accepted(args.n // 2), 0),
        ("leader PAXOS_HEARTBEAT_RESP", lambda: leader_heartbeat_resp(args.n), 0),
    ]
    report(cases, args.repeat, "values")


if __name__ == "__main__":
    main()
