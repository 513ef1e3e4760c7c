"""Runs tests/consensus/transcripts/raft/*.txt against the Raft core (``--rewrite`` regenerates)."""

from __future__ import annotations

import pathlib

import pytest

from consensus.transcript import RAFT_COMMANDS, run_file
from kvstore.consensus.raft import RawNode

DIR = pathlib.Path(__file__).parent / "transcripts" / "raft"
FILES = sorted(DIR.glob("*.txt"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_transcript(path: pathlib.Path, request: pytest.FixtureRequest) -> None:
    rewrite = bool(request.config.getoption("rewrite"))
    mismatches = run_file(path, RawNode, RAFT_COMMANDS, rewrite=rewrite)
    if mismatches:
        cmd, want, got = mismatches[0]
        pytest.fail(
            f"{path.name}: {len(mismatches)} block(s) differ; first: {cmd!r}\n"
            f"--- expected\n{want}\n--- actual\n{got}\n(run pytest --rewrite and read the diff)"
        )
