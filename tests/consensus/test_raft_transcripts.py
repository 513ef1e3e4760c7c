"""Runs tests/consensus/transcripts/raft/*.txt against the Raft core (``--rewrite`` regenerates).

The generic commands come from ``transcript.py`` (shared with Multi-Paxos); the
Raft-only ones, which read RawNode internals, are in ``RAFT_COMMANDS`` below.
"""

from __future__ import annotations

import pathlib

import pytest

from consensus.transcript import Command, Harness, run_file
from kvstore.consensus.raft import RawNode
from kvstore.consensus.raft.progress import ProgressState

DIR = pathlib.Path(__file__).parent / "transcripts" / "raft"
FILES = sorted(DIR.glob("*.txt"))


def cmd_progress(h: Harness, args: list[str], out: list[str]) -> None:
    """progress ID: the Raft leader's view of each member."""
    core = h.core(int(args[0]))
    assert isinstance(core, RawNode)
    for node, pr in sorted(core.raft.tracker.progress.items()):
        line = f"{node}: {pr.state.name} match={pr.match} next={pr.next}"
        if pr.state is ProgressState.REPLICATE:
            line += f" inflight={pr.inflights.count()}"
        if pr.state is ProgressState.PROBE and pr.probe_sent:
            line += " paused"
        if pr.state is ProgressState.SNAPSHOT:
            line += f" pending={pr.pending_snapshot}"
        if pr.is_learner:
            line += " learner"
        out.append(line)


def cmd_report_unreachable(h: Harness, args: list[str], out: list[str]) -> None:
    """report-unreachable ID PEER: ID's transport could not send to PEER."""
    h.core(int(args[0])).report_unreachable(int(args[1]))


def cmd_report_snapshot(h: Harness, args: list[str], out: list[str]) -> None:
    """report-snapshot ID PEER ok|fail: the snapshot ID sent to PEER arrived or was lost."""
    h.core(int(args[0])).report_snapshot(int(args[1]), args[2] == "ok")


RAFT_COMMANDS: dict[str, Command] = {
    "progress": cmd_progress,
    "report-unreachable": cmd_report_unreachable,
    "report-snapshot": cmd_report_snapshot,
}


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
