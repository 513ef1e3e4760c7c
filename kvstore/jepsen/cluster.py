"""The node processes of a run: one ``kvstore serve`` per host namespace.

Each node runs as ``ip netns exec kvjN <server command>``, listening on its host address,
port :data:`PORT`, with its data in ``<run dir>/nodes/nN/data`` and its output appended to
``<run dir>/nodes/nN.log`` (across restarts). With ``clock=True`` every node starts under
libfaketime with a per-node control file, so the clock nemesis can move its clocks later.

Invariant: :meth:`Cluster.stop` (also on every error path, via the context manager) leaves no
process of ours running: it resumes paused nodes and kills them all.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from kvstore.jepsen import disk
from kvstore.jepsen.hosts import HarnessError, Host, in_ns

PORT = 27000
FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
)


def faketime_lib() -> str:
    for path in FAKETIME_LIBS:
        if Path(path).exists():
            return path
    raise HarnessError("libfaketime not found: install Debian's faketime package")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    consensus: str = "raft"
    server_cmd: str | None = None
    """A template run through str.format with id, ip, port, listen, peers, data_dir; None:
    ``<python> -m MODULE serve ...``."""
    module: str = "kvstore.cli"
    """kvstore.jepsen.unsafe_node: nodes that acknowledge before commit."""
    env: Mapping[str, str] | None = None
    clock: bool = False
    tick_ms: int = 50
    shards: int = 0
    """> 0: every node bootstraps the same map pre-split into this many shards (the
    default split keys a..z); 0: one unsharded group."""
    replicas: int = 3
    """Replicas per shard (sharded clusters only)."""
    tls: bool = False
    """Mutual TLS: certificates made in RUN_DIR/certs (`kvstore jepsen run --tls`)."""
    disk_mb: int = 0
    """When > 0, each node's data directory is a tmpfs of this size (the disk nemesis)."""


class ClientTLS(TypedDict, total=False):
    """AsyncClient's TLS options; empty: plaintext."""

    cacert: str
    cert: str
    key: str


def endpoint(host: Host) -> str:
    return f"{host.ip}:{PORT}"


class Cluster:
    def __init__(self, hosts: Sequence[Host], run_dir: Path, spec: NodeSpec) -> None:
        self.hosts = list(hosts)
        self.run_dir = run_dir
        self.spec = spec
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.paused: set[int] = set()
        self.joining: set[int] = set()
        """Nodes the member nemesis removed: they start with --join from now on (which only
        matters when their data directory is empty)."""
        (run_dir / "nodes").mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoints(self) -> list[str]:
        return [endpoint(h) for h in self.hosts]

    def _clock_file(self, host: Host) -> Path:
        return self.run_dir / "nodes" / f"n{host.index}.faketime"

    def data_dir(self, host: Host) -> Path:
        return self.run_dir / "nodes" / f"n{host.index}" / "data"

    def forget(self, host: Host) -> None:
        """Kills the node and wipes its data; from now on it starts as a newcomer
        (``serve --join``), which waits to be added rather than bootstrapping again."""
        self.joining.add(host.index)
        self.kill(host)
        shutil.rmtree(self.data_dir(host), ignore_errors=True)

    def argv(self, host: Host) -> list[str]:
        peers = ",".join(f"{h.index}={endpoint(h)}" for h in self.hosts)
        data_dir = self.data_dir(host)
        data_dir.mkdir(parents=True, exist_ok=True)
        join = ["--join"] if host.index in self.joining else []
        if self.spec.server_cmd:
            cmd = self.spec.server_cmd.format(
                id=host.index,
                ip=host.ip,
                port=PORT,
                listen=endpoint(host),
                peers=peers,
                data_dir=data_dir,
            )
            return shlex.split(cmd) + join
        return [
            sys.executable,
            "-m",
            self.spec.module,
            "serve",
            *("--id", str(host.index), "--listen", endpoint(host), "--peers", peers),
            *("--data-dir", str(data_dir), "--consensus", self.spec.consensus),
            *("--cluster-id", "jepsen", "--tick-ms", str(self.spec.tick_ms)),
            *join,
            *self._shard_flags(),
            *self._tls_flags(host),
        ]

    @property
    def cert_dir(self) -> Path:
        return self.run_dir / "certs"

    def _tls_flags(self, host: Host) -> list[str]:
        if not self.spec.tls:
            return []
        from kvstore.security import certs

        certs.init(str(self.cert_dir), len(self.hosts), [h.ip for h in self.hosts])
        return certs.serve_flags(str(self.cert_dir), host.index)

    @property
    def client_options(self) -> ClientTLS:
        """TLS options for the clients of the run (admin role: the nemeses need it)."""
        if not self.spec.tls:
            return {}
        d = self.cert_dir
        return {
            "cacert": str(d / "ca.pem"),
            "cert": str(d / "admin.pem"),
            "key": str(d / "admin-key.pem"),
        }

    def _shard_flags(self) -> list[str]:
        if not self.spec.shards:
            return []
        return ["--shards", str(self.spec.shards), "--replicas", str(self.spec.replicas)]

    def _env(self, host: Host) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.spec.env or {})
        # the node imports kvstore from wherever this harness imports it
        here = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        if self.spec.clock:
            f = self._clock_file(host)
            if not f.exists():
                f.write_text("+0\n")
            env["LD_PRELOAD"] = faketime_lib()
            env["FAKETIME_TIMESTAMP_FILE"] = str(f)
            env["FAKETIME_CACHE_DURATION"] = "1"
        return env

    def start(self, host: Host) -> None:
        old = self.procs.get(host.index)
        if old is not None and old.poll() is None:
            return
        if self.spec.disk_mb:
            disk.mount(self.data_dir(host), self.spec.disk_mb)
        log = (self.run_dir / "nodes" / f"n{host.index}.log").open("ab")
        try:
            self.procs[host.index] = subprocess.Popen(
                in_ns(host, self.argv(host)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(host),
                start_new_session=True,
            )
        except OSError as e:
            raise HarnessError(f"cannot start node n{host.index}: {e}") from None
        finally:
            log.close()

    def start_all(self) -> None:
        for h in self.hosts:
            self.start(h)

    def alive(self, host: Host) -> bool:
        p = self.procs.get(host.index)
        return p is not None and p.poll() is None

    def _signal(self, host: Host, sig: signal.Signals) -> None:
        p = self.procs.get(host.index)
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, sig)

    def kill(self, host: Host) -> None:
        self._signal(host, signal.SIGKILL)
        p = self.procs.get(host.index)
        if p is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        self.paused.discard(host.index)

    def restart(self, host: Host) -> None:
        if not self.alive(host):
            self.start(host)

    def pause(self, host: Host) -> None:
        self._signal(host, signal.SIGSTOP)
        self.paused.add(host.index)

    def resume(self, host: Host) -> None:
        self._signal(host, signal.SIGCONT)
        self.paused.discard(host.index)

    def set_clock_offset(self, host: Host, seconds: float) -> None:
        if not self.spec.clock:
            raise HarnessError("clock faults need the nodes started under libfaketime")
        self._clock_file(host).write_text(f"{seconds:+.3f}\n")

    def fill_disk(self, host: Host) -> str:
        if not self.spec.disk_mb:
            raise HarnessError("disk faults need the nodes' data on small tmpfs disks")
        return disk.fill(self.data_dir(host))

    def free_disk(self, host: Host) -> None:
        disk.free(self.data_dir(host))

    def damage(self, host: Host, rng: random.Random) -> str:
        """Stops the node, damages its data, starts it again; says what the node did."""
        self.kill(host)
        what = disk.damage(self.data_dir(host), rng)
        self.start(host)
        time.sleep(3.0)
        p = self.procs[host.index]
        if p.poll() is None:
            return f"{what}; n{host.index} still running"
        log = (self.run_dir / "nodes" / f"n{host.index}.log").read_text(errors="replace")
        last = [line for line in log.splitlines() if line.strip()][-1:] or [""]
        return f"{what}; n{host.index} refused to start (exit {p.returncode}): {last[0][-160:]}"

    def heal_all(self) -> None:
        """Every node running, resumed, with its clock back at zero."""
        for h in self.hosts:
            self.resume(h)
            if self.spec.clock:
                self.set_clock_offset(h, 0.0)
            self.restart(h)

    def exited(self) -> list[tuple[Host, int]]:
        """Nodes that died on their own (not killed by the nemesis), with exit codes."""
        out = []
        for h in self.hosts:
            p = self.procs.get(h.index)
            if p is not None and p.returncode is None:
                code = p.poll()
                if code is not None:
                    out.append((h, code))
        return out

    def wait_listening(self, timeout: float = 30.0) -> None:
        """Waits until every node accepts TCP connections on its port."""
        deadline = time.monotonic() + timeout
        for h in self.hosts:
            while True:
                p = self.procs.get(h.index)
                if p is not None and p.poll() is not None:
                    raise HarnessError(
                        f"node n{h.index} exited with {p.returncode} at start; see "
                        f"{self.run_dir / 'nodes' / f'n{h.index}.log'}"
                    )
                with contextlib.suppress(OSError), socket.create_connection((h.ip, PORT), 0.5):
                    break
                if time.monotonic() > deadline:
                    raise HarnessError(f"node n{h.index} not listening on {endpoint(h)}")
                time.sleep(0.1)

    def stop(self) -> None:
        for h in self.hosts:
            self._signal(h, signal.SIGCONT)
            self._signal(h, signal.SIGKILL)
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        self.paused.clear()
        if self.spec.disk_mb:
            for h in self.hosts:
                disk.unmount(self.data_dir(h))
