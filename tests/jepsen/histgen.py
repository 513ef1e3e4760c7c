"""Generates linearizable histories from a sequential model, for the checker's tests.

Each operation gets a linearization point (1, 2, 3, ... in sequence order) and an interval
around it, so the intervals overlap at random (concurrency) while the sequence order stays a
valid linearization. Writes and cas may lose their outcome (unknown, returning at infinity).
"""

from __future__ import annotations

import math
import random

from kvstore.jepsen.history import Operation, Value


def register_history(
    rng: random.Random,
    n: int,
    *,
    keys: int = 1,
    width: float = 3.0,
    values: int = 5,
    unknown_rate: float = 0.1,
) -> list[Operation]:
    state: dict[str, Value] = {}
    ops: list[Operation] = []
    for point in range(1, n + 1):
        key = f"k{rng.randrange(keys)}"
        cur = state.get(key)
        kind = rng.choice(("read", "read", "write", "cas"))
        inp: Value = None
        out: Value
        if kind == "read":
            out = cur
        elif kind == "write":
            inp = rng.randrange(values)
            out = inp
            state[key] = inp
        else:
            expected = rng.choice((cur, rng.randrange(values)))
            new = rng.randrange(values)
            inp = (expected, new)
            out = cur == expected
            if out:
                state[key] = new
        call = point - rng.uniform(0, width)
        ret = point + rng.uniform(0, width)
        unknown = kind != "read" and rng.random() < unknown_rate
        ops.append(
            Operation(
                id=len(ops),
                process=len(ops),
                f=kind,
                key=key,
                input=inp,
                output=None if unknown else out,
                call=call,
                ret=math.inf if unknown else ret,
                unknown=unknown,
            )
        )
    return ops


def after_all(ops: list[Operation]) -> float:
    finite = [op.ret for op in ops if not op.unknown] + [op.call for op in ops]
    return max(finite, default=0.0) + 1.0
