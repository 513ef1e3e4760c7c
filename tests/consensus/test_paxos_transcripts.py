"""Runs tests/consensus/transcripts/paxos/*.txt against the Multi-Paxos core.

The generic commands come from ``transcript.py`` (shared with Raft); ``progress``
below shows the Paxos leader's per-acceptor view. ``pytest --rewrite`` regenerates.
"""

from __future__ import annotations

import pathlib

import pytest

from consensus.transcript import Command, Harness, run_file
from kvstore.consensus.paxos import PaxosNode
from kvstore.consensus.paxos import ballot as ballots

DIR = pathlib.Path(__file__).parent / "transcripts" / "paxos"
FILES = sorted(DIR.glob("*.txt"))


def cmd_progress(h: Harness, args: list[str], out: list[str]) -> None:
    """progress ID: the Paxos leader's view of each acceptor."""
    core = h.core(int(args[0]))
    assert isinstance(core, PaxosNode)
    if core.lead is None:
        out.append("not leading")
        return
    out.append(f"ballot {ballots.fmt(core.lead.ballot)} ({core.lead.ballot})")
    for node, pr in sorted(core.lead.progress.items()):
        line = f"{node}: {pr.state.name} match={pr.match} next={pr.next}"
        if pr.inflight:
            line += f" inflight={len(pr.inflight)}"
        if pr.probe_sent:
            line += " paused"
        if pr.pending_snapshot and pr.state.name == "SNAPSHOT":
            line += f" pending={pr.pending_snapshot}"
        out.append(line)


PAXOS_COMMANDS: dict[str, Command] = {"progress": cmd_progress}


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_transcript(path: pathlib.Path, request: pytest.FixtureRequest) -> None:
    rewrite = bool(request.config.getoption("rewrite"))
    mismatches = run_file(path, PaxosNode, PAXOS_COMMANDS, rewrite=rewrite)
    if mismatches:
        cmd, want, got = mismatches[0]
        pytest.fail(
            f"{path.name}: {len(mismatches)} block(s) differ; first: {cmd!r}\n"
            f"--- expected\n{want}\n--- actual\n{got}\n(run pytest --rewrite and read the diff)"
        )
