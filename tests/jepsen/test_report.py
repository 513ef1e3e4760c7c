"""The report: fault windows, timeline boxes, and the files a run leaves behind."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kvstore.jepsen.history import NEMESIS, Event
from kvstore.jepsen.report import fault_windows, render_html, spans, write_report

EVENTS = [
    Event(type="invoke", process=0, f="write", key="r0", value=1, time=0.0),
    Event(type="invoke", process=NEMESIS, f="kill", value="kill -9 {n1}", time=0.5),
    Event(type="ok", process=0, f="write", key="r0", value=1, time=1.0),
    Event(type="invoke", process=1, f="read", key="r0", time=1.2),
    Event(type="ok", process=NEMESIS, f="kill", value="restarted n1", time=2.0),
    Event(type="info", process=1, f="read", key="r0", time=3.0, error="timeout <x>"),
    Event(type="invoke", process=NEMESIS, f="pause", value="SIGSTOP {n2}", time=3.5),
    Event(type="invoke", process=2, f="cas", key="r0", value=(1, 2), time=3.6),
]


def test_fault_windows_pair_start_and_heal_and_run_to_the_end_when_open() -> None:
    ws = fault_windows(EVENTS, end=10.0)
    assert [(w.kind, w.start, w.end) for w in ws] == [("kill", 0.5, 2.0), ("pause", 3.5, 10.0)]


def test_spans_cover_completed_and_pending_operations() -> None:
    ss = spans(EVENTS)
    assert [(s.process, s.type, s.start, s.end) for s in ss] == [
        (0, "ok", 0.0, 1.0),
        (1, "info", 1.2, 3.0),
        (2, "info", 3.6, 3.6),
    ]


def test_html_escapes_and_marks_faults() -> None:
    page = render_html(
        title="t",
        verdict="invalid",
        summary=[("nemesis", "kill")],
        anomalies=["lost-write: <b>"],
        events=EVENTS,
        concurrency=3,
    )
    assert 'class="invalid"' in page
    assert "&lt;b&gt;" in page and "<b>" not in page
    assert page.count('class="fault"') == 2
    assert page.count('class="op"') == 3
    assert "timeout &lt;x&gt;" in page


def test_write_report_leaves_html_and_plots(tmp_path: Path) -> None:
    page = write_report(
        tmp_path,
        title="t",
        verdict="valid",
        summary=[],
        anomalies=[],
        events=EVENTS,
        concurrency=3,
    )
    assert page.exists()
    for png in ("latency.png", "throughput.png"):
        data = (tmp_path / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000


def test_a_report_without_matplotlib_keeps_its_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes `import matplotlib` raise ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    page = write_report(
        tmp_path,
        title="t",
        verdict="valid",
        summary=[],
        anomalies=[],
        events=EVENTS,
        concurrency=3,
    )
    text = page.read_text()
    assert "valid" in text and "need matplotlib" in text
    assert not (tmp_path / "latency.png").exists()
