"""A local cluster of real `kvstore serve` processes on loopback, for integration tests.

Rule: whatever it starts it stops (``close()`` kills every process it spawned).
Ports come from the node engineer's range 17000-17999, probed free before use.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvstore.client import Client

PORT_RANGE = (17000, 17999)


def free_ports(n: int) -> list[int]:
    """n ports in our range that are free now (bound and released)."""
    out: list[int] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 2000:
            raise RuntimeError("no free ports in 17000-17999")
        port = random.randint(*PORT_RANGE)
        if port not in out and _free(port):
            out.append(port)
    return out


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(n: int) -> int:
    """A base port with base..base+n-1 all free now (for `kvstore cluster --port`)."""
    for _ in range(200):
        base = random.randint(PORT_RANGE[0], PORT_RANGE[1] - n + 1)
        if all(_free(base + i) for i in range(n)):
            return base
    raise RuntimeError(f"no block of {n} free ports in 17000-17999")


def paxos_available() -> bool:
    try:
        from kvstore.consensus.paxos import PaxosNode  # noqa: F401
    except ImportError:
        return False
    return True


class LocalCluster:
    def __init__(
        self,
        root: Path,
        *,
        nodes: int = 3,
        consensus: str = "raft",
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        metrics: bool = False,
    ) -> None:
        self.root = root
        self.n = nodes
        self.consensus = consensus
        self.extra = extra or []
        self.env = env or {}
        ports = free_ports(nodes * 2 if metrics else nodes)
        self.ports = {i: ports[i - 1] for i in range(1, nodes + 1)}
        self.metrics_ports = (
            {i: ports[nodes + i - 1] for i in range(1, nodes + 1)} if metrics else {}
        )
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint(i) for i in sorted(self.ports)]

    def endpoint(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[i]}"

    def argv(self, i: int) -> list[str]:
        peers = ",".join(f"{j}=127.0.0.1:{p}" for j, p in sorted(self.ports.items()))
        return [
            sys.executable,
            "-m",
            "kvstore.cli",
            "serve",
            "--id",
            str(i),
            "--listen",
            self.endpoint(i),
            "--peers",
            peers,
            "--data-dir",
            str(self.root / f"node{i}"),
            "--consensus",
            self.consensus,
            *(["--metrics-port", str(self.metrics_ports[i])] if self.metrics_ports else []),
            *self.extra,
        ]

    def start(self, i: int | None = None) -> None:
        for j in [i] if i is not None else sorted(self.ports):
            logf = open(self.root / f"node{j}.log", "ab")  # noqa: SIM115 - the child owns it
            env = {**os.environ, **self.env}
            self.procs[j] = subprocess.Popen(
                self.argv(j), stdout=logf, stderr=subprocess.STDOUT, env=env
            )
            logf.close()

    def kill(self, i: int) -> None:
        """kill -9."""
        p = self.procs.pop(i)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def stop(self, i: int) -> None:
        p = self.procs.pop(i)
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def close(self) -> None:
        for i in list(self.procs):
            self.kill(i)

    def alive(self, i: int) -> bool:
        p = self.procs.get(i)
        return p is not None and p.poll() is None

    def log(self, i: int) -> str:
        return (self.root / f"node{i}.log").read_text(errors="replace")

    def client(self, timeout: float = 10.0, only: list[int] | None = None) -> Client:
        eps = [self.endpoint(i) for i in only] if only else self.endpoints
        return Client(eps, timeout=timeout)

    def status(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        with Client(self.endpoints, timeout=timeout) as c:
            return c.status()

    def leader(self) -> int | None:
        """The node that says it leads group 1 (and whose term is the highest)."""
        best: tuple[int, int] | None = None
        for n in self.status():
            if not n["reachable"]:
                continue
            for g in n.get("groups", []):
                if g["role"] == "leader" and (best is None or g["term"] > best[0]):
                    best = (g["term"], n["id"])
        return None if best is None else best[1]

    def group_leaders(self) -> dict[int, int]:
        """Group id -> the node that says it leads it, over the reachable nodes."""
        out: dict[int, int] = {}
        for n in self.status():
            for g in n.get("groups", []) if n["reachable"] else []:
                if g["role"] == "leader":
                    out[g["group"]] = n["id"]
        return out

    def wait_leader(self, timeout: float = 20.0) -> int:
        return wait_for(self.leader, timeout, "a leader")

    def metrics(self, i: int) -> str:
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_ports[i]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text: str = r.read().decode()
            return text

    def node_status(self, i: int) -> dict[str, Any]:
        with Client([self.endpoint(i)], timeout=2.0) as c:
            st: dict[str, Any] = c.status()[0]
            return st


def wait_for(fn: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``fn`` until it returns something truthy (external processes: nothing to await)."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = fn()
        except Exception as e:  # a node may be starting up
            last_exc = e
            v = None
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


@contextlib.contextmanager
def running_cluster(root: Path, **kw: Any) -> Any:
    c = LocalCluster(root, **kw)
    try:
        c.start()
        yield c
    finally:
        c.close()


class Writers:
    """Background writers, one key each, putting "1", "2", "3" ... until stopped.

    ``acked[name]`` is the last value acknowledged for that key; a writer's first error is
    recorded in ``errors`` and ends that writer. ``start`` returns once every writer got
    an acknowledgement; ``stop`` asserts that none failed.
    """

    def __init__(
        self, cluster: LocalCluster, names: list[str], *, timeout: float, pause: float = 0.0
    ) -> None:
        self.cluster, self.timeout, self.pause = cluster, timeout, pause
        self.acked: dict[str, int] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write, args=(n,)) for n in names]

    def _write(self, name: str) -> None:
        with self.cluster.client(timeout=self.timeout) as w:
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    w.put(name, str(n))
                except Exception as e:  # recorded, checked by stop()
                    self.errors.append(f"{name}: {e!r}")
                    return
                self.acked[name] = n
                if self.pause:
                    time.sleep(self.pause)

    def start(self) -> Writers:
        for t in self._threads:
            t.start()
        wait_for(lambda: len(self.acked) == len(self._threads), 20, "every writer acknowledged")
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        assert not self.errors, self.errors[:3]
