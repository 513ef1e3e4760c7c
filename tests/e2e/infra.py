"""Helpers for the end-to-end tests: daemons, commands, ports, timings, cluster checks.

Rule: nothing here leaves a process, container, VM or network behind; every helper that
starts something returns what its caller needs to stop it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from kvstore.client import Client
from kvstore.client.errors import KVError

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PORT_RANGE = (37000, 37999)
# Settings for clusters with nodes in emulated guests (25-30x slower than the host).
SLOW_TICK_MS = 100
SLOW_ELECTION_TICKS = 50
SLOW_HEARTBEAT_TICKS = 5

TIMINGS: dict[str, float] = {}
T = TypeVar("T")


@contextmanager
def timed(name: str) -> Iterator[None]:
    """Records how long the block took under `name` (reported at the end of the run)."""
    t0 = time.monotonic()
    try:
        yield
    finally:
        TIMINGS[name] = time.monotonic() - t0


def write_timings() -> Path | None:
    if not TIMINGS:
        return None
    out = REPO / "out"
    out.mkdir(exist_ok=True)
    path = out / "e2e-timings.json"
    old: dict[str, float] = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
    old.update({k: round(v, 1) for k, v in TIMINGS.items()})
    path.write_text(json.dumps(old, indent=2) + "\n")
    return path


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Runs a command; on failure the error carries its output (shown by pytest)."""
    full_env = {**os.environ, **(env or {})}
    p = subprocess.run(
        list(argv),
        env=full_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {p.returncode}\n--- stdout\n{p.stdout[-4000:]}"
            f"\n--- stderr\n{p.stderr[-4000:]}"
        )
    return p


def missing_commands(*names: str) -> list[str]:
    return [n for n in names if shutil.which(n) is None]


def start_daemon(kind: str) -> list[int]:
    """Starts dockerd or libvirtd when none answers; returns the pids it started."""
    p = run(["bash", str(DEPLOY / "daemons.sh"), "start", kind], timeout=120, check=False)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip() or f"could not start {kind}")
    return [int(x) for x in p.stdout.split()]


def stop_daemons(pids: list[int]) -> None:
    if pids:
        run(["bash", str(DEPLOY / "daemons.sh"), "stop", *map(str, pids)], check=False)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n ports in the deploy range (37000-37999) that are free now on `host`."""
    out: list[int] = []
    for port in range(PORT_RANGE[0] + (os.getpid() % 50) * 16, PORT_RANGE[1]):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        out.append(port)
        if len(out) == n:
            return out
    raise RuntimeError(f"no {n} free ports in {PORT_RANGE}")


def wait_for(what: str, fn: Callable[[], T | None], timeout: float, every: float = 1.0) -> T:
    """Polls fn until it returns a value that is not None (or False); fails after timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = fn()
            if value is not None and value is not False:
                return value
        except (KVError, OSError) as e:
            last_error = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}") from (
                last_error
            )
        time.sleep(every)


# -- cluster checks through the client library ------------------------------------------
def leader_of(status: list[dict[str, Any]], group: int = 1) -> int | None:
    """Node id that reports itself leader of `group` (None when no reachable node does)."""
    for node in status:
        for g in node.get("groups", []):
            if g["group"] == group and g["role"] == "leader":
                return int(node["id"])
    return None


def wait_leader(endpoints: Sequence[str], timeout: float) -> int:
    with Client(list(endpoints), timeout=5.0) as c:
        return wait_for("a leader", lambda: leader_of(c.status()), timeout)


def put_until_ok(c: Client, key: str, value: str, timeout: float) -> float:
    """Retries one write until it succeeds; returns the seconds it took."""
    t0 = time.monotonic()

    def attempt() -> bool:
        c.put(key, value)
        return True

    wait_for(f"write of {key}", attempt, timeout, every=0.2)
    return time.monotonic() - t0


def write_and_read(c: Client, prefix: str, n: int, op_timeout: float = 0.0) -> dict[str, str]:
    """n writes, then a strong read of each; returns what was written. With op_timeout, an
    operation that fails for lack of time is retried until op_timeout (emulated guests on
    a busy host can take longer than the client's deadline for one write)."""
    data = {f"{prefix}-{i:03d}": f"value-{prefix}-{i}" for i in range(n)}
    for k, v in data.items():
        if op_timeout:
            put_until_ok(c, k, v, op_timeout)
        else:
            c.put(k, v)
    for k, v in data.items():
        got = (
            wait_for(f"strong read of {k}", lambda k=k: [c.get(k, read_mode="strong")], op_timeout)[
                0
            ]
            if op_timeout
            else c.get(k, read_mode="strong")
        )
        assert got == v.encode(), k
    return data


def caught_up(endpoint: str, leader_endpoint: str, data: dict[str, str]) -> bool:
    """True when the node at `endpoint` has applied the leader's commit index and serves
    every key of `data` from its own state (eventual reads go to that node only)."""
    with Client([leader_endpoint], timeout=5.0) as c:
        st = c.status()[0]
    if not st.get("reachable"):
        return False
    commit = max(g["commit"] for g in st["groups"] if g["group"] == 1)
    with Client([endpoint], timeout=5.0) as c:
        mine = c.status()[0]
        if not mine.get("reachable"):
            return False
        applied = max(g["applied"] for g in mine["groups"] if g["group"] == 1)
        if applied < commit:
            return False
        return all(c.get(k, read_mode="eventual") == v.encode() for k, v in data.items())
