"""Start and stop the 3-member clusters the comparison drives, on loopback.

Rule this module keeps: every process it starts is stopped (SIGTERM, then SIGKILL) when the
`with` block ends, even on error or Ctrl-C, and every cluster is reported ready only after
a real client request has succeeded against it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self


class ClusterError(RuntimeError):
    pass


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metric_is_one(url: str, name: str) -> bool:
    """True when the Prometheus text at ``url`` has the sample ``name`` (with its labels,
    as printed) equal to 1."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return False
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == name:
            try:
                if float(value) == 1.0:
                    return True
            except ValueError:
                continue
    return False


def ensure_etcd() -> str:
    """Path of Debian's etcd 3.4 server binary, installing etcd-server with apt if missing."""
    path = shutil.which("etcd")
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ClusterError("etcd is not installed; install Debian's etcd-server package")
    print("== installing Debian's etcd-server (apt-get)", file=sys.stderr, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=600", "etcd-server"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    # Debian's maintainer script may start the system service on its default ports; we do
    # not use it, and leave it as the package set it up.
    path = shutil.which("etcd")
    if not path:
        raise ClusterError("etcd-server installed but no etcd binary on PATH")
    return path


def etcd_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    first = out.stdout.splitlines()[0] if out.stdout else "unknown"
    return first.replace("etcd Version:", "").strip()


class ProcessGroup:
    """Processes started together and stopped together."""

    def __init__(self, name: str, log_dir: Path) -> None:
        self.name = name
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, label: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{label}.log", "wb")  # noqa: SIM115 - closed with the proc
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal reaches only us; we stop them
        )
        log.close()
        self.procs.append(proc)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise ClusterError(
                    f"{self.name}: process {p.pid} ({p.args!r}) exited with {p.returncode}; "
                    f"see {self.log_dir}"
                )

    def stop(self, grace_s: float = 5.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


def wait_until(ready: Callable[[], bool], group: ProcessGroup, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "not ready"
    while time.monotonic() < deadline:
        group.check_alive()
        try:
            if ready():
                return
        except Exception as e:  # any failure means "not ready yet"; the last one is shown
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.2)
    raise ClusterError(
        f"{group.name} not ready after {timeout_s:.0f}s ({last[:500]}); see {group.log_dir}"
    )


class _LocalCluster:
    """Members started by ``__enter__`` over a wiped ``data_dir``, reported ready once
    ``_ready`` (a real client request) succeeds, all stopped by ``__exit__``."""

    data_dir: Path
    group: ProcessGroup
    leader_metric: str
    """The Prometheus sample, labels included, that is 1 on the member that leads."""

    def _start_members(self) -> None:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _metrics_ports(self) -> list[int]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        try:
            self._start_members()
            wait_until(self._ready, self.group, 60.0)
        except BaseException:
            self.group.stop()
            raise
        return self

    def leader_pid(self) -> int | None:
        """The pid of the member that leads now (its ``leader_metric`` is 1)."""
        for port, pid in zip(self._metrics_ports(), self.group.pids(), strict=True):
            if _metric_is_one(f"http://127.0.0.1:{port}/metrics", self.leader_metric):
                return pid
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.group.stop()


class EtcdCluster(_LocalCluster):
    """Three etcd members on 127.0.0.1: clients on base_port+1..3, peers on base_port+101..103.

    Default etcd settings (fsync of the WAL on every commit); data under `data_dir`. With
    ``certs`` (a `kvstore certs init` directory) clients and peers speak mutual TLS, with
    etcd's own flags: member i serves node-i.pem, and client certificates are required.
    """

    leader_metric = "etcd_server_is_leader"

    def __init__(
        self, data_dir: Path, base_port: int = 48000, members: int = 3, certs: Path | None = None
    ) -> None:
        self.binary = ensure_etcd()
        self.certs = certs
        self.data_dir = data_dir
        self.names = [f"etcd{i}" for i in range(1, members + 1)]
        self.client_ports = [base_port + i for i in range(1, members + 1)]
        self.peer_ports = [base_port + 100 + i for i in range(1, members + 1)]
        self.group = ProcessGroup("etcd", data_dir / "logs")

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    def _start_members(self) -> None:
        scheme = "http" if self.certs is None else "https"
        initial = ",".join(
            f"{n}={scheme}://127.0.0.1:{p}"
            for n, p in zip(self.names, self.peer_ports, strict=True)
        )
        for i, (name, cport, pport) in enumerate(
            zip(self.names, self.client_ports, self.peer_ports, strict=True), start=1
        ):
            tls: list[str] = []
            if self.certs is not None:
                c = self.certs
                tls = [
                    f"--cert-file={c}/node-{i}.pem",
                    f"--key-file={c}/node-{i}-key.pem",
                    f"--trusted-ca-file={c}/ca.pem",
                    "--client-cert-auth",
                    f"--peer-cert-file={c}/node-{i}.pem",
                    f"--peer-key-file={c}/node-{i}-key.pem",
                    f"--peer-trusted-ca-file={c}/ca.pem",
                    "--peer-client-cert-auth",
                ]
            self.group.start(
                name,
                [
                    self.binary,
                    f"--name={name}",
                    f"--data-dir={self.data_dir / name}",
                    f"--listen-client-urls={scheme}://127.0.0.1:{cport}",
                    f"--advertise-client-urls={scheme}://127.0.0.1:{cport}",
                    f"--listen-peer-urls={scheme}://127.0.0.1:{pport}",
                    f"--initial-advertise-peer-urls={scheme}://127.0.0.1:{pport}",
                    f"--initial-cluster={initial}",
                    "--initial-cluster-state=new",
                    "--initial-cluster-token=kvstore-bench",
                    "--logger=zap",
                    "--log-level=warn",
                    *tls,
                ],
            )

    def _ready(self) -> bool:
        import grpc

        from kvstore.bench.etcd_target import probe_etcd

        creds = None
        if self.certs is not None:
            creds = grpc.ssl_channel_credentials(
                *((self.certs / f).read_bytes() for f in ("ca.pem", "client-key.pem", "client.pem"))
            )
        return probe_etcd(self.endpoints, creds=creds)

    def _metrics_ports(self) -> list[int]:
        return self.client_ports


class KvstoreCluster(_LocalCluster):
    """Three `kvstore serve` processes on 127.0.0.1:base_port+1..3, data under `data_dir`."""

    leader_metric = 'kvstore_is_leader{group="1"}'

    def __init__(
        self,
        data_dir: Path,
        base_port: int = 47000,
        members: int = 3,
        extra_args: Sequence[str] = (),
        launcher: Sequence[str] = ("-m", "kvstore.cli"),
        env_for: Callable[[int], dict[str, str]] | None = None,
    ) -> None:
        """`launcher`: what follows the Python interpreter to reach the CLI's `serve`;
        `env_for(node id)`: extra environment of that node."""
        self.data_dir = data_dir
        self.launcher = list(launcher)
        self.env_for = env_for
        self.ids = list(range(1, members + 1))
        self.ports = [base_port + i for i in self.ids]
        self.metrics_ports = [base_port + 100 + i for i in self.ids]
        self.extra_args = list(extra_args)
        self.group = ProcessGroup("kvstore", data_dir / "logs")

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def _start_members(self) -> None:
        peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in zip(self.ids, self.ports, strict=True))
        for i, port, mport in zip(self.ids, self.ports, self.metrics_ports, strict=True):
            self.group.start(
                f"node{i}",
                [
                    sys.executable,
                    *self.launcher,
                    "serve",
                    f"--id={i}",
                    f"--listen=127.0.0.1:{port}",
                    f"--peers={peers}",
                    f"--data-dir={self.data_dir / f'node{i}'}",
                    f"--metrics-port={mport}",
                    *self.extra_args,
                ],
                env=dict(os.environ, **self.env_for(i)) if self.env_for else None,
            )

    def _ready(self) -> bool:
        from kvstore.bench.kvstore_target import probe_kvstore

        return probe_kvstore(self.endpoints)

    def _metrics_ports(self) -> list[int]:
        return self.metrics_ports
