"""Session guarantees per client: read-your-writes and monotonic reads.

Built for the session workload, where every key has exactly one writer that writes 1, 2,
3, ... in order, so a key's version order is its counter order (None reads as 0). A worker
(client session) is ``process % concurrency``. For each worker, in invocation order:
- ``read-your-writes``: a read of a key returns at least the worker's last acknowledged
  write to it;
- ``monotonic-reads``: a read of a key returns at least what the worker read of it before;
- ``phantom``: a read returns a value no write attempted;
- ``lost-write``: the final strong read of a key is below its last acknowledged write.
This module performs no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvstore.jepsen.checker.anomaly import Anomaly
from kvstore.jepsen.history import Operation, Value

_SHOWN = 20


def check_sessions(
    ops: Sequence[Operation], concurrency: int, final: Mapping[str, Value] | None = None
) -> list[Anomaly]:
    attempted: dict[str | None, int] = {}
    acked: dict[str | None, int] = {}
    for op in ops:
        if op.f == "write":
            attempted[op.key] = max(attempted.get(op.key, 0), int(op.input))
            if not op.unknown:
                acked[op.key] = max(acked.get(op.key, 0), int(op.input))
    out: list[Anomaly] = []
    workers: dict[int, list[Operation]] = {}
    for op in ops:
        if op.process >= 0:
            workers.setdefault(op.process % concurrency, []).append(op)
    for w in sorted(workers):
        wrote: dict[str | None, tuple[int, Operation]] = {}
        seen: dict[str | None, tuple[int, Operation]] = {}
        for op in sorted(workers[w], key=lambda o: o.call):
            if op.unknown:
                continue
            if op.f == "write":
                wrote[op.key] = (int(op.input), op)
                continue
            if op.f != "read":
                continue
            v = int(op.output or 0)
            if v > attempted.get(op.key, 0):
                out.append(
                    Anomaly(
                        kind="phantom", key=op.key, message=f"read {v}, never written", ops=(op,)
                    )
                )
            floor_w = wrote.get(op.key)
            floor_r = seen.get(op.key)
            if floor_w is not None and v < floor_w[0]:
                out.append(
                    Anomaly(
                        kind="read-your-writes",
                        key=op.key,
                        message=f"session {w} wrote {floor_w[0]} then read {v}",
                        ops=(floor_w[1], op),
                    )
                )
            elif floor_r is not None and v < floor_r[0]:
                out.append(
                    Anomaly(
                        kind="monotonic-reads",
                        key=op.key,
                        message=f"session {w} read {floor_r[0]} then {v}",
                        ops=(floor_r[1], op),
                    )
                )
            if floor_r is None or v > floor_r[0]:
                seen[op.key] = (v, op)
    for key, last in sorted(acked.items(), key=lambda kv: str(kv[0])):
        if final is not None and key is not None and key in final:
            got = int(final[key] or 0)
            if got < last:
                out.append(
                    Anomaly(
                        kind="lost-write",
                        key=key,
                        message=f"last acknowledged write {last}, final read {got}",
                    )
                )
    return out[: _SHOWN * 10]
