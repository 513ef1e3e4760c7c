"""The report of a run: an HTML page (verdict, anomalies, timeline) and two PNG plots.

Files written into the run directory:
- ``report.html``: the verdict, the anomalies with their operations, the fault windows, and
  a timeline in the style of Jepsen's: one column per worker, one box per operation from
  its invocation to its completion (green ok, red fail, orange info; hover for details),
  with the fault windows as shaded bands across all columns;
- ``latency.png``: each operation's latency at its invocation time, per outcome, log scale;
- ``throughput.png``: completions per second, per outcome.
Both plots shade the fault windows. Only :func:`write_report` performs I/O.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvstore.jepsen.history import NEMESIS, Event

COLORS = {"ok": "#6db36d", "fail": "#e06666", "info": "#f0a040"}
PX_PER_SECOND = 40.0
MAX_HEIGHT = 24000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultWindow:
    kind: str
    start: float
    end: float
    description: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Span:
    """One client operation as drawn: invocation to completion (or the end of the run)."""

    process: int
    f: str
    key: str | None
    type: str
    start: float
    end: float
    text: str


def fault_windows(events: Sequence[Event], end: float) -> list[FaultWindow]:
    """Nemesis invoke/ok pairs; a fault never healed lasts until ``end``."""
    out: list[FaultWindow] = []
    open_: Event | None = None
    for ev in events:
        if ev.process != NEMESIS:
            continue
        if ev.type == "invoke":
            open_ = ev
        elif open_ is not None:
            out.append(
                FaultWindow(
                    kind=open_.f, start=open_.time, end=ev.time, description=str(open_.value)
                )
            )
            open_ = None
    if open_ is not None:
        out.append(
            FaultWindow(kind=open_.f, start=open_.time, end=end, description=str(open_.value))
        )
    return out


def spans(events: Sequence[Event]) -> list[Span]:
    pending: dict[int, Event] = {}
    out: list[Span] = []
    end = max((ev.time for ev in events), default=0.0)
    for ev in events:
        if ev.process == NEMESIS:
            continue
        if ev.type == "invoke":
            pending[ev.process] = ev
            continue
        inv = pending.pop(ev.process, None)
        if inv is None:
            continue
        text = f"p{ev.process} {inv.f} {inv.key or ''} {inv.value!r} -> {ev.type} {ev.value!r}"
        if ev.error:
            text += f" ({ev.error})"
        out.append(
            Span(
                process=ev.process,
                f=inv.f,
                key=inv.key,
                type=ev.type,
                start=inv.time,
                end=ev.time,
                text=text,
            )
        )
    for inv in pending.values():
        out.append(
            Span(
                process=inv.process,
                f=inv.f,
                key=inv.key,
                type="info",
                start=inv.time,
                end=end,
                text=f"p{inv.process} {inv.f} {inv.key or ''} {inv.value!r} -> never completed",
            )
        )
    return out


def timeline_html(events: Sequence[Event], concurrency: int) -> str:
    ops = spans(events)
    end = max((ev.time for ev in events), default=0.0)
    scale = min(PX_PER_SECOND, MAX_HEIGHT / max(end, 1e-9))
    lanes = sorted({s.process % max(concurrency, 1) for s in ops} | {0})
    col = {lane: i for i, lane in enumerate(lanes)}
    width = 110
    parts = [
        f'<div class="timeline" style="height:{end * scale + 40:.0f}px;'
        f'width:{len(lanes) * width + 60}px">'
    ]
    for w in fault_windows(events, end):
        parts.append(
            f'<div class="fault" style="top:{w.start * scale + 20:.1f}px;'
            f'height:{max((w.end - w.start) * scale, 1):.1f}px" '
            f'title="{html.escape(w.kind + ": " + w.description)}">'
            f"<span>{html.escape(w.kind)}</span></div>"
        )
    for second in range(math.ceil(end) + 1):
        if second % 5 == 0:
            parts.append(
                f'<div class="tick" style="top:{second * scale + 20:.1f}px">{second}s</div>'
            )
    for lane in lanes:
        parts.append(
            f'<div class="lane" style="left:{col[lane] * width + 50}px">worker {lane}</div>'
        )
    for s in ops:
        left = col[s.process % max(concurrency, 1)] * width + 52
        top = s.start * scale + 20
        height = max((s.end - s.start) * scale, 2.0)
        parts.append(
            f'<div class="op" style="left:{left}px;top:{top:.1f}px;height:{height:.1f}px;'
            f'background:{COLORS.get(s.type, "#999")}" title="{html.escape(s.text)}">'
            f"{html.escape(s.f)}</div>"
        )
    parts.append("</div>")
    return "\n".join(parts)


_CSS = """
body{font-family:sans-serif;margin:1.5em}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto}
.valid{color:#2a7a2a}.invalid{color:#b22}.unknown{color:#a60}
.timeline{position:relative;border-top:1px solid #ccc;font-size:10px}
.op{position:absolute;width:100px;overflow:hidden;border-radius:2px;opacity:.85;
    border:1px solid rgba(0,0,0,.25);box-sizing:border-box;padding-left:2px}
.fault{position:absolute;left:0;right:0;background:rgba(120,120,255,.15);
    border-top:1px solid rgba(80,80,200,.5)}
.fault span{position:absolute;right:2px;color:#55a}
.tick{position:absolute;left:0;color:#888}
.lane{position:absolute;top:0;font-weight:bold}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
"""


def _shade(ax: object, windows: Sequence[FaultWindow]) -> None:
    for i, w in enumerate(windows):
        ax.axvspan(  # type: ignore[attr-defined]
            w.start, w.end, color="#8888ff", alpha=0.18, lw=0, label="fault" if i == 0 else None
        )


def _save(plt: Any, fig: Any, ax: Any, title: str, ylabel: str, end: float, path: Path) -> Path:
    """Label a plot over the run's time, write it to ``path`` and free it."""
    ax.set_xlabel("time (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_xlim(0, max(end, 1.0))
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(events: Sequence[Event], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = spans(events)
    end = max((ev.time for ev in events), default=1.0)
    windows = fault_windows(events, end)
    written = []

    fig, ax = plt.subplots(figsize=(10, 4.5))
    _shade(ax, windows)
    for t in ("ok", "fail", "info"):
        pts = [(s.start, max(s.end - s.start, 1e-4) * 1000) for s in ops if s.type == t]
        if pts:
            ax.scatter(
                [p[0] for p in pts], [p[1] for p in pts], s=4, color=COLORS[t], label=t, alpha=0.7
            )
    ax.set_yscale("log")
    written.append(_save(plt, fig, ax, "latency", "latency (ms)", end, out / "latency.png"))

    fig, ax = plt.subplots(figsize=(10, 4.5))
    _shade(ax, windows)
    buckets = max(1, math.ceil(end))
    for t in ("ok", "fail", "info"):
        counts = [0] * buckets
        for s in ops:
            if s.type == t:
                counts[min(int(s.end), buckets - 1)] += 1
        if any(counts):
            ax.plot([i + 0.5 for i in range(buckets)], counts, color=COLORS[t], label=t)
    path = out / "throughput.png"
    written.append(_save(plt, fig, ax, "throughput", "completions / s", end, path))
    return written


def render_html(
    *,
    title: str,
    verdict: str,
    summary: Sequence[tuple[str, str]],
    anomalies: Sequence[str],
    events: Sequence[Event],
    concurrency: int,
    plots: Sequence[str] = ("latency.png", "throughput.png"),
) -> str:
    cls = {"valid": "valid", "invalid": "invalid"}.get(verdict, "unknown")
    end = max((ev.time for ev in events), default=0.0)
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary
    )
    faults = "".join(
        f"<tr><td>{w.start:.2f}</td><td>{w.end:.2f}</td><td>{html.escape(w.kind)}</td>"
        f"<td>{html.escape(w.description)}</td></tr>"
        for w in fault_windows(events, end)
    )
    found = "".join(f"<pre>{html.escape(a)}</pre>" for a in anomalies) or "<p>none</p>"
    imgs = (
        "".join(f'<p><img src="{html.escape(p)}" alt="{html.escape(p)}"></p>' for p in plots)
        or "<p>no plots: they need matplotlib (pip install 'kvstore[bench]')</p>"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(title)}: <span class="{cls}">{html.escape(verdict)}</span></h1>
<table>{rows}</table>
<h2>Anomalies</h2>{found}
<h2>Faults</h2>
<table><tr><th>start (s)</th><th>end (s)</th><th>fault</th><th>what</th></tr>{faults}</table>
<h2>Latency and throughput</h2>{imgs}
<h2>Timeline</h2>
<p>One column per worker; boxes from invocation to completion (green ok, red fail,
orange info); shaded bands are fault windows. Hover for details.</p>
{timeline_html(events, concurrency)}
</body></html>
"""


def write_report(
    out: Path,
    *,
    title: str,
    verdict: str,
    summary: Sequence[tuple[str, str]],
    anomalies: Sequence[str],
    events: Sequence[Event],
    concurrency: int,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    try:
        plots = [p.name for p in write_plots(events, out)]
    except ModuleNotFoundError as e:
        # the verdict is the product of a run; the plots are optional (the bench extra),
        # and a run of minutes must not end in a traceback for want of them
        if e.name != "matplotlib":
            raise
        plots = []
    page = render_html(
        title=title,
        verdict=verdict,
        summary=summary,
        anomalies=anomalies,
        events=events,
        concurrency=concurrency,
        plots=plots,
    )
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
