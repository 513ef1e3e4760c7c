"""Messages per second through ``RawNode.step`` on one Raft core (no I/O, no driver).

    python benchmarks/core_step.py [--n 20000] [--repeat 3]

Cases (each times only ``step``; Readies are drained and persisted to MemoryStorage
between batches, untimed):
- follower APPEND, 1 entry per message
- follower APPEND, 64 entries per message (also reported as entries/s)
- leader APPEND_RESP (two followers acknowledging each new entry; commit advances)
- leader HEARTBEAT_RESP
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.raft import RawNode
from kvstore.consensus.types import Config, Core, Entry, Message, MessageType

MT = MessageType
DATA = b"x" * 256
DRAIN_EVERY = 64


def drain(n: Core, st: MemoryStorage) -> None:
    """Persist and acknowledge one Ready, untimed (shared by benchmarks/paxos_step.py)."""
    if n.has_ready():
        rd = n.ready()
        st.append(rd.entries)
        if rd.hard_state:
            st.set_hard_state(rd.hard_state)
        n.advance(rd)


def timed(msgs: list[Message], n: Core, st: MemoryStorage) -> float:
    step = n.step
    total = 0.0
    for i in range(0, len(msgs), DRAIN_EVERY):
        batch = msgs[i : i + DRAIN_EVERY]
        t0 = time.perf_counter()
        for m in batch:
            step(m)
        total += time.perf_counter() - t0
        drain(n, st)
    return total


def follower_append(count: int, per_msg: int) -> tuple[float, int]:
    st = MemoryStorage(voters={1, 2, 3})
    n = RawNode(Config(id=2, rng=random.Random(2)), st)
    msgs, idx = [], 0
    for _ in range(count):
        ents = tuple(Entry(term=1, index=idx + k + 1, data=DATA) for k in range(per_msg))
        msgs.append(
            Message(
                type=MT.APPEND,
                group=0,
                from_=1,
                to=2,
                term=1,
                log_term=1 if idx else 0,
                index=idx,
                entries=ents,
                commit=idx,
            )
        )
        idx += per_msg
    return timed(msgs, n, st), count


def leader(count: int) -> tuple[RawNode, MemoryStorage]:
    st = MemoryStorage(voters={1, 2, 3})
    n = RawNode(Config(id=1, pre_vote=False, rng=random.Random(1)), st)
    n.campaign()
    drain(n, st)
    n.step(Message(type=MT.VOTE_RESP, group=0, from_=2, to=1, term=1))
    drain(n, st)
    for f in (2, 3):
        n.step(Message(type=MT.APPEND_RESP, group=0, from_=f, to=1, term=1, index=1))
    for _ in range(count):
        n.propose(DATA)
    drain(n, st)
    drain(n, st)
    return n, st


def leader_append_resp(count: int) -> tuple[float, int]:
    n, st = leader(count)
    msgs = [
        Message(type=MT.APPEND_RESP, group=0, from_=f, to=1, term=1, index=i + 2)
        for i in range(count)
        for f in (2, 3)
    ]
    return timed(msgs, n, st), len(msgs)


def leader_heartbeat_resp(count: int) -> tuple[float, int]:
    n, st = leader(1)
    for f in (2, 3):  # followers caught up: the steady state between proposals
        n.step(Message(type=MT.APPEND_RESP, group=0, from_=f, to=1, term=1, index=2))
    drain(n, st)
    msgs = [
        Message(type=MT.HEARTBEAT_RESP, group=0, from_=2 + i % 2, to=1, term=1)
        for i in range(count)
    ]
    return timed(msgs, n, st), count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="messages per case")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the best is shown")
    args = ap.parse_args()
    cases: list[Case] = [
        ("follower APPEND (1 entry)", lambda: follower_append(args.n, 1), 1),
        ("follower APPEND (64 entries)", lambda: follower_append(args.n // 16, 64), 64),
        ("leader APPEND_RESP", lambda: leader_append_resp(args.n // 2), 0),
        ("leader HEARTBEAT_RESP", lambda: leader_heartbeat_resp(args.n), 0),
    ]
    report(cases, args.repeat, "entries")


Case = tuple[str, Callable[[], tuple[float, int]], int]


def report(cases: list[Case], repeat: int, unit: str) -> None:
    """Best of ``repeat`` runs per case, as messages/s (and ``unit``/s when batched)."""
    for name, fn, per_msg in cases:
        secs, msgs = min(fn() for _ in range(repeat))
        line = f"{name:32s} {msgs / secs:>10,.0f} msgs/s"
        if per_msg > 1:
            line += f"  ({msgs * per_msg / secs:,.0f} {unit}/s)"
        print(line)


if __name__ == "__main__":
    main()
