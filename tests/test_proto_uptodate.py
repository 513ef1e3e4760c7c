"""The checked-in kvstore/_pb matches what proto/generate.sh makes of proto/kvstore/v1."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lines that only name the generator's version: a newer grpcio-tools is not staleness.
_VERSION_LINE = re.compile(
    r"GRPC_GENERATED_VERSION = |Protobuf Python Version|^\s+\d+,$|^# (mypy-)?protoc|mypy-protobuf"
)


def _normalized(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not _VERSION_LINE.search(line))


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    pytest.importorskip("mypy_protobuf")
    out = tmp_path / "pb"
    subprocess.run(
        ["bash", str(ROOT / "proto" / "generate.sh"), str(out)],
        check=True,
        capture_output=True,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHON": sys.executable},
    )
    want = {p.name: _normalized(p.read_text()) for p in out.iterdir() if p.is_file()}
    have = {
        p.name: _normalized(p.read_text())
        for p in (ROOT / "kvstore" / "_pb").iterdir()
        if p.is_file() and p.suffix in (".py", ".pyi")
    }
    assert sorted(want) == sorted(have), "file set differs: run bash proto/generate.sh"
    stale = [name for name in want if want[name] != have[name]]
    assert not stale, f"stale generated files {stale}: run bash proto/generate.sh"
