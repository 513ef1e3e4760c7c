"""deploy/cluster-status.py, which vm.sh waits with: "no leader" is exit 3, distinct from a
check that could not run (a Python without grpc: exit 1 with its traceback), so vm.sh no
longer reports a missing module as "no leader after 900 s". No root, no VMs needed."""

from __future__ import annotations

import subprocess
import sys

from .infra import DEPLOY, REPO, free_ports

SCRIPT = str(DEPLOY / "cluster-status.py")


def test_no_leader_is_exit_3() -> None:
    (port,) = free_ports(1)  # nothing listens there
    p = subprocess.run(
        [sys.executable, SCRIPT, f"127.0.0.1:{port}", "--wait", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)
    assert "unreachable" in p.stdout and "no leader yet" in p.stdout


def test_a_check_that_cannot_run_is_not_no_leader() -> None:
    # -S -I: no site-packages, no PYTHONPATH: grpc cannot be imported, as with a bare python3
    p = subprocess.run(
        [sys.executable, "-S", "-I", SCRIPT, "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert p.returncode not in (0, 3), p.returncode
    assert "Error" in p.stderr
