"""Summaries of sampled stacks (py-spy's collapsed "raw" format) by layer of the node.

Rule this module keeps: every sample is charged to exactly one layer for self time (the
innermost frame that belongs to a known layer, else "other"), so self shares add up to
100%; inclusive shares count a sample once per layer that appears anywhere on its stack.
Performs no I/O.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

# (layer, substrings of a frame's "function (file:line)" text), most specific first.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("consensus core", ("kvstore/consensus/",)),
    ("state machine", ("kvstore/statemachine",)),
    ("storage (LMDB)", ("kvstore/storage/", "lmdb")),
    ("peer transport", ("kvstore/node/transport", "kvstore/node/wire", "kvstore/server/peer")),
    ("client RPC service", ("kvstore/server/kv", "kvstore/server/convert")),
    ("node driver", ("kvstore/node/", "kvstore/server/")),
    ("profiling harness", ("traced_node.py",)),
    ("protobuf", ("google/protobuf",)),
    ("metrics", ("prometheus_client",)),
    ("logging", ("logging/",)),
    ("grpc", ("grpc/", "grpc_")),
    ("event loop", ("asyncio/", "uvloop", "selectors", "concurrent/futures", "threading.py")),
)
_FRAME_COUNT = re.compile(r"^(.*)\s+(\d+)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class StackSummary:
    samples: int
    self_by_layer: dict[str, int]
    inclusive_by_layer: dict[str, int]
    self_by_function: dict[str, int]
    inclusive_by_function: dict[str, int]
    by_thread: dict[str, int]


def layer_of(frame: str) -> str | None:
    for layer, needles in LAYERS:
        if any(n in frame for n in needles):
            return layer
    return None


def short(frame: str) -> str:
    """'put (kvstore/storage/log.py:42)' -> 'put (storage/log.py)': readable in a table."""
    m = re.match(r"^(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    fn, path = m.groups()
    for anchor in ("kvstore/", "site-packages/", "lib/python3"):
        if anchor in path:
            path = path.split(anchor, 1)[1]
            break
    return f"{fn} ({path})"


def summarize(lines: Iterable[str], *, has_thread_frame: bool = True) -> StackSummary:
    """Summarize collapsed stacks: 'root;...;leaf COUNT' per line, root first.

    File names must be full paths (py-spy --full-filenames), or the layer patterns
    cannot tell kvstore/node/log.py from kvstore/consensus/raft/log.py.
    """
    self_layer: Counter[str] = Counter()
    incl_layer: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in lines:
        m = _FRAME_COUNT.match(line.strip())
        if not m:
            continue
        stack, count = m.group(1), int(m.group(2))
        frames = stack.split(";")
        if has_thread_frame and frames:
            threads[frames[0]] += count
            frames = frames[1:]
        if not frames:
            continue
        total += count
        layers = [layer_of(f) for f in frames]
        own = next((lay for lay in reversed(layers) if lay is not None), "other")
        self_layer[own] += count
        for lay in {x for x in layers if x is not None}:
            incl_layer[lay] += count
        self_fn[short(frames[-1])] += count
        for fn in {short(f) for f in frames}:
            incl_fn[fn] += count
    return StackSummary(
        samples=total,
        self_by_layer=dict(self_layer.most_common()),
        inclusive_by_layer=dict(incl_layer.most_common()),
        self_by_function=dict(self_fn.most_common()),
        inclusive_by_function=dict(incl_fn.most_common()),
        by_thread=dict(threads.most_common()),
    )


def format_summary(s: StackSummary, title: str, top: int = 15) -> str:
    def pct(n: int) -> str:
        return f"{100.0 * n / s.samples:5.1f}%" if s.samples else "  -  "

    out = [
        f"### {title} ({s.samples} samples)",
        "",
        "| layer | self | inclusive |",
        "|---|---|---|",
    ]
    layers = list(dict.fromkeys([*s.self_by_layer, *s.inclusive_by_layer]))
    for lay in layers:
        out.append(
            f"| {lay} | {pct(s.self_by_layer.get(lay, 0))} "
            f"| {pct(s.inclusive_by_layer.get(lay, 0))} |"
        )
    out += ["", "| function (self time) | share |", "|---|---|"]
    for fn, n in list(s.self_by_function.items())[:top]:
        out.append(f"| `{fn}` | {pct(n)} |")
    if len(s.by_thread) > 1:
        out += ["", "| thread | share |", "|---|---|"]
        for th, n in s.by_thread.items():
            out.append(f"| {th} | {pct(n)} |")
    return "\n".join(out)
