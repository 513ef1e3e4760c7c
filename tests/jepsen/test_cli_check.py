"""``kvstore jepsen check``: exit 0 linearizable, 1 not, 2 unreadable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kvstore.jepsen.cli import main

GOOD = [
    '{"type":"invoke","process":0,"f":"write","key":"k","value":1,"time":0}',
    '{"type":"ok","process":0,"f":"write","key":"k","value":1,"time":1}',
    '{"type":"invoke","process":1,"f":"read","key":"k","value":null,"time":2}',
    '{"type":"ok","process":1,"f":"read","key":"k","value":1,"time":3}',
]
BAD = [*GOOD[:3], '{"type":"ok","process":1,"f":"read","key":"k","value":7,"time":3}']


def _write(tmp_path: Path, name: str, lines: list[str]) -> str:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def test_linearizable_history_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", _write(tmp_path, "good.jsonl", GOOD)]) == 0
    assert "linearizable" in capsys.readouterr().out


def test_violation_exits_1_and_names_the_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", _write(tmp_path, "bad.jsonl", BAD), "--format", "jsonl"]) == 1
    out = capsys.readouterr().out
    assert "not-linearizable" in out and "p1 read k -> 7" in out


@pytest.mark.parametrize(
    ("lines", "fmt"),
    [(["garbage"], "auto"), (GOOD, "jepsen-log"), (['{"type":"ok"'], "jsonl")],
)
def test_unreadable_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], fmt: str
) -> None:
    assert main(["check", _write(tmp_path, "x", lines), "--format", fmt]) == 2
    assert "unreadable history" in capsys.readouterr().err


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "nope")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_module_entry_point(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kvstore.jepsen.cli", "check", _write(tmp_path, "b", BAD)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 1, done.stderr
