"""Seeded generator of large many-client kv histories in Porcupine's public format.

Hard cases for the linearizability checker: ``clients`` processes run get/put/append on
``keys`` string registers (Porcupine's kv model). Each client waits a little, then calls;
most operations are quick, a few take up to a hundred times longer (a slow node, a retry),
which is what makes the search wide. Every operation takes effect at a random instant inside
its interval and the results are computed from that order, so the history is linearizable.

``anomaly="stale"`` then makes one read (in the second half of the history) return the value
its key had just before an append that had completed before the read was called, where
everything that built that old value had completed before the append was called. No
linearization can explain it: the append's value is gone, and the old value's parts cannot
be put back together after it (every value is written once). So the history is not
linearizable, by construction.

Run as a script to write files for the benchmark:
``python -m tests.jepsen.hardgen --seed 1 --clients 50 --ops 10000 [--anomaly stale] OUT``.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True)
class _Op:
    client: int
    f: str
    key: str
    value: str
    call: float
    ret: float
    at: float  # linearization instant
    output: str = ""
    before: str = ""  # the key's value just before this operation took effect
    parts_done: float = 0.0  # when the last operation that built ``before`` returned


def _events(rng: random.Random, clients: int, n: int, keys: int) -> list[_Op]:
    ops: list[_Op] = []
    free = [rng.uniform(0.0, 1.0) for _ in range(clients)]
    seq = [0] * clients
    while len(ops) < n:
        c = min(range(clients), key=free.__getitem__)
        call = free[c] + rng.expovariate(1.0)
        slow = rng.random() < 0.03
        duration = rng.uniform(5.0, 100.0) if slow else rng.expovariate(1.0 / 0.8)
        ret = call + duration
        r = rng.random()
        f = "get" if r < 0.5 else ("append" if r < 0.92 else "put")
        value = "" if f == "get" else f"x {c} {seq[c]} y"
        seq[c] += 1
        ops.append(_Op(c, f, str(rng.randrange(keys)), value, call, ret, rng.uniform(call, ret)))
        free[c] = ret
    return ops


def _apply(ops: list[_Op]) -> None:
    state: dict[str, str] = {}
    built: dict[str, float] = {}  # per key: latest return among the ops that built the value
    for op in sorted(ops, key=lambda o: o.at):
        cur = state.get(op.key, "")
        op.before = cur
        op.parts_done = built.get(op.key, 0.0)
        if op.f == "get":
            op.output = cur
        elif op.f == "put":
            state[op.key] = op.value
            built[op.key] = op.ret
        else:
            state[op.key] = cur + op.value
            built[op.key] = max(built.get(op.key, 0.0), op.ret)
        if op.f != "get":
            op.output = op.value


def _inject_stale(rng: random.Random, ops: list[_Op]) -> _Op:
    """Makes a read in the second half return a value that was overwritten before it began."""
    half = sorted(o.call for o in ops)[len(ops) // 2]
    reads = [o for o in ops if o.f == "get" and o.call >= half]
    rng.shuffle(reads)
    for g in reads:
        cands = [
            w
            for w in ops
            if w.key == g.key
            and w.f == "append"
            and w.ret < g.call
            and w.parts_done < w.call
            and w.before != g.output
        ]
        if cands:
            w = max(cands, key=lambda o: o.ret)
            g.output = w.before
            return g
    raise ValueError("no read to make stale: generate a longer history")


def kv_lines(
    seed: int, *, clients: int = 50, ops: int = 10_000, keys: int = 10, anomaly: str | None = None
) -> list[str]:
    """The history as lines of Porcupine's kv format, in time order."""
    rng = random.Random(seed)
    history = _events(rng, clients, ops, keys)
    _apply(history)
    if anomaly == "stale":
        _inject_stale(rng, history)
    elif anomaly is not None:
        raise ValueError(f"unknown anomaly {anomaly!r}")
    events: list[tuple[float, int, _Op]] = []
    for op in history:
        events.append((op.call, 0, op))
        events.append((op.ret, 1, op))
    events.sort(key=lambda e: (e[0], e[1]))
    lines = []
    for _, kind, op in events:
        if kind == 0:
            value = "nil" if op.f == "get" else f'"{op.value}"'
            t = "invoke"
        else:
            value = f'"{op.output}"'
            t = "ok"
        lines.append(
            f'{{:process {op.client}, :type :{t}, :f :{op.f}, :key "{op.key}", :value {value}}}'
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--ops", type=int, default=10_000)
    p.add_argument("--keys", type=int, default=10)
    p.add_argument("--anomaly", choices=("stale",), default=None)
    a = p.parse_args()
    lines = kv_lines(a.seed, clients=a.clients, ops=a.ops, keys=a.keys, anomaly=a.anomaly)
    Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
