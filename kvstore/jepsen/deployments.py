"""Jepsen hosts that are real deployments: the compose cluster and the libvirt VMs.

``kvstore jepsen run --hosts compose|vms`` runs the same workloads, nemesis schedule,
checker and report as the namespace hosts, against nodes the deployment tools start:
``docker-compose`` (docker-compose.yml, plus docker-compose.5.yml for 5 nodes and
docker-compose.tls.yml with ``--tls``) or ``deploy/vm.sh``. Each backend is a
:class:`Deployment` (the nemesis' ``Processes`` plus what the runner needs) and a
:class:`BridgeFaults` (the nemesis' network):

- compose: ``docker kill``/``docker start`` (power loss of a container), ``docker
  pause``/``unpause`` (cgroup freezer: the whole container stops);
- vms: ``virsh destroy``/``start`` (power loss of a machine; it boots again),
  ``virsh suspend``/``resume`` (the whole machine paused);
- both: partitions and packet loss are iptables rules on the host, in a chain of ours
  jumped to first from FORWARD, matching traffic between two node addresses on the
  deployment's bridge (bridged frames pass FORWARD with br_netfilter, which the container
  engine loads). Traffic from the host (the clients) is never dropped, as in Jepsen.

Invariant: the deployment's names never start with ``kvj`` and its subnets are not
10.77.x (those belong to the namespace hosts and their slots); :meth:`Deployment.stop`
(also on every error path, through the context manager) removes the chain and brings the
whole deployment down, VMs included, after copying each node's log to
``RUN_DIR/nodes/nN.log`` for the crash check.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kvstore.jepsen.cluster import ClientTLS
from kvstore.jepsen.hosts import DropFaults, HarnessError, Host

REPO = Path(__file__).resolve().parents[2]
PORT = 7001
COMPOSE_PROJECT = "kvsjepsen"
COMPOSE_SUBNET = "10.38.6"
VM_PREFIX, VM_BRIDGE, VM_SUBNET = "kvsjepvm", "virbr-kvsjep", "10.39.0"
BACKENDS = ("netns", "compose", "vms")
UNSUPPORTED = ("clock", "member", "disk-full", "disk-damage")
"""Faults the deployments cannot make: they need libfaketime, wiped data directories or
tmpfs disks under the harness' control."""


def _exec(
    argv: Sequence[str], timeout: float, env: dict[str, str] | None, cwd: Path | None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
            cwd=cwd,
        )
    except FileNotFoundError:
        raise HarnessError(f"{argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise HarnessError(f"timed out after {timeout:.0f}s: {' '.join(argv)}") from None


def _run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    done = _exec(argv, timeout, env, cwd)
    if check and done.returncode != 0:
        err = (done.stderr or done.stdout).strip()[-1500:]
        raise HarnessError(f"{' '.join(argv[:4])} ... failed (exit {done.returncode}): {err}")
    return done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ok(argv: Sequence[str]) -> bool:
    return _exec(argv, 60, None, None).returncode == 0


class BridgeFaults(DropFaults):
    """Partitions and loss between node addresses on one bridge, by host iptables rules."""

    def __init__(self, hosts: Sequence[Host], ips: dict[int, str], chain: str) -> None:
        self.hosts = list(hosts)
        self.ips = ips
        self.chain = chain

    def install(self) -> None:
        self.remove()
        bridge_nf = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
        if not bridge_nf.exists():
            _run(["modprobe", "br_netfilter"], check=False)
        if not bridge_nf.exists() or bridge_nf.read_text().strip() != "1":
            with contextlib.suppress(OSError):
                bridge_nf.write_text("1\n")
        if not bridge_nf.exists() or bridge_nf.read_text().strip() != "1":
            raise HarnessError(
                "bridged traffic does not pass iptables (br_netfilter, "
                "net.bridge.bridge-nf-call-iptables=1): partitions would do nothing"
            )
        _run(["iptables", "-w", "-N", self.chain])
        _run(["iptables", "-w", "-I", "FORWARD", "1", "-j", self.chain])

    def remove(self) -> None:
        while _ok(["iptables", "-w", "-D", "FORWARD", "-j", self.chain]):
            pass
        _run(["iptables", "-w", "-F", self.chain], check=False)
        _run(["iptables", "-w", "-X", self.chain], check=False)

    def _drop(self, src: Host, dst: Host, *match: str) -> None:
        _run(
            [
                *("iptables", "-w", "-A", self.chain, "-s", self.ips[src.index]),
                *("-d", self.ips[dst.index], *match, "-j", "DROP"),
            ]
        )

    def heal(self, hosts: Sequence[Host] | None = None) -> None:
        _run(["iptables", "-w", "-F", self.chain], check=False)


class Deployment:
    """Nodes of a deployment, driven from the host: the nemesis' Processes and more."""

    name = "deployment"
    fault_names: dict[str, str] = {}
    """How kill, restart, pause and resume are made here (for the history and report)."""

    def __init__(self, n: int, run_dir: Path, *, shards: int, replicas: int, tls: bool) -> None:
        self.hosts = [Host(index=i) for i in range(1, n + 1)]
        self.run_dir = run_dir
        self.shards, self.replicas, self.tls = shards, replicas, tls
        self.ips: dict[int, str] = {}
        self.killed: set[int] = set()
        self.paused: set[int] = set()
        self.faults: BridgeFaults | None = None
        (run_dir / "nodes").mkdir(parents=True, exist_ok=True)

    # -- what the runner needs -----------------------------------------------------------
    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client_address(self, host: Host) -> tuple[str, int]:
        return self.ips[host.index], PORT

    @property
    def endpoints(self) -> list[str]:
        return [":".join(map(str, self.client_address(h))) for h in self.hosts]

    @property
    def cert_dir(self) -> Path:
        return self.run_dir / "certs"

    @property
    def client_options(self) -> ClientTLS:
        if not self.tls:
            return {}
        d = self.cert_dir
        return {
            "cacert": str(d / "ca.pem"),
            "cert": str(d / "admin.pem"),
            "key": str(d / "admin-key.pem"),
        }

    def make_certs(self, names: Sequence[str]) -> None:
        from kvstore.security import certs

        certs.init(str(self.cert_dir), len(self.hosts), list(names))

    def start_all(self) -> None:
        raise NotImplementedError

    def wait_listening(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for h in self.hosts:
            while True:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(self.client_address(h), 1.0),
                ):
                    break
                if time.monotonic() > deadline:
                    raise HarnessError(f"node n{h.index} not listening on {self.endpoints}")
                time.sleep(0.5)

    def heal_all(self) -> None:
        for h in self.hosts:
            self.resume(h)
            self.restart(h)

    def exited(self) -> list[tuple[Host, int]]:
        return []

    def stop(self) -> None:
        raise NotImplementedError

    # -- the nemesis' Processes ----------------------------------------------------------
    def kill(self, host: Host) -> None:
        raise NotImplementedError

    def restart(self, host: Host) -> None:
        raise NotImplementedError

    def pause(self, host: Host) -> None:
        raise NotImplementedError

    def resume(self, host: Host) -> None:
        raise NotImplementedError

    def _unsupported(self, what: str) -> HarnessError:
        return HarnessError(f"--hosts {self.name} cannot {what}")

    def set_clock_offset(self, host: Host, seconds: float) -> None:
        if seconds:
            raise self._unsupported("move clocks")

    def fill_disk(self, host: Host) -> str:
        raise self._unsupported("fill disks")

    def free_disk(self, host: Host) -> None:
        raise self._unsupported("free disks")

    def damage(self, host: Host, rng: object) -> str:
        raise self._unsupported("damage data files")


class ComposeDeployment(Deployment):
    """docker-compose.yml (3 nodes; 5 with docker-compose.5.yml) as project kvsjepsen."""

    name = "compose"
    fault_names = {
        "kill": "docker kill",
        "restart": "docker start",
        "pause": "docker pause",
        "resume": "docker unpause",
    }

    def __init__(self, n: int, run_dir: Path, *, shards: int, replicas: int, tls: bool) -> None:
        if n not in (3, 5):
            raise HarnessError("--hosts compose runs 3 or 5 nodes (--nodes 3 or --nodes 5)")
        super().__init__(n, run_dir, shards=shards, replicas=replicas, tls=tls)
        self.containers: dict[int, str] = {}
        self.restarts: dict[int, int] = {}
        self.up = False
        self.compose = self._compose_command()
        # Clients go through the published ports on 127.0.0.1 (a name the certificates
        # hold; the containers' addresses are known only once they run). The engine
        # forwards from the network's gateway address, which partitions never drop.
        self.ports = [_free_port() for _ in range(2 * len(self.hosts))]

    def client_address(self, host: Host) -> tuple[str, int]:
        if len(self.hosts) == 5:
            # docker-compose.5.yml: fixed addresses that the nodes (and so the shard map,
            # which sharded clients follow) know each other by
            return f"{COMPOSE_SUBNET}.{10 + host.index}", PORT
        return "127.0.0.1", self.ports[host.index - 1]

    @staticmethod
    def _compose_command() -> list[str]:
        if shutil.which("docker-compose"):
            return ["docker-compose"]
        if shutil.which("docker"):
            return ["docker", "compose"]
        raise HarnessError("no docker-compose: apt-get install docker.io docker-compose")

    def _files(self) -> list[str]:
        files = ["docker-compose.yml"]
        if len(self.hosts) == 5:
            files.append("docker-compose.5.yml")
        if self.tls:
            files.append("docker-compose.tls.yml")
            if len(self.hosts) == 5:
                files.append("docker-compose.5.tls.yml")
        out = []
        for f in files:
            if not (REPO / f).exists():
                raise HarnessError(f"{REPO / f} not found (run from a kvstore checkout)")
            out += ["-f", str(REPO / f)]
        return out

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KVSTORE_IMAGE"] = env.get("KVSTORE_IMAGE", "kvstore:latest")
        env["KVSTORE_CLUSTER_ID"] = COMPOSE_PROJECT
        env["KVSTORE_SHARDS"] = str(self.shards)
        env["KVSTORE_REPLICAS"] = str(self.replicas)
        env["KVSTORE_CERTS"] = str(self.cert_dir)
        env["KVSTORE_SUBNET"] = COMPOSE_SUBNET
        n = len(self.hosts)
        for i in range(1, n + 1):
            env[f"KVSTORE_PORT_{i}"] = str(self.ports[i - 1])
            env[f"KVSTORE_METRICS_PORT_{i}"] = str(self.ports[n + i - 1])
        return env

    def _dc(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        argv = [*self.compose, "-p", COMPOSE_PROJECT, *self._files(), *args]
        return _run(argv, timeout=timeout, check=check, env=self._env(), cwd=REPO)

    def start_all(self) -> None:
        image = self._env()["KVSTORE_IMAGE"]
        if not _ok(["docker", "image", "inspect", image]):
            raise HarnessError(
                f"image {image} not found or no docker engine: bash deploy/daemons.sh start "
                "docker && bash deploy/build-image.sh"
            )
        if self.tls:
            names = [f"node{h.index}" for h in self.hosts]
            self.make_certs(names + [f"{COMPOSE_SUBNET}.{10 + h.index}" for h in self.hosts])
            for h in self.hosts:  # the image runs as uid 10001; the keys are 0600
                os.chown(self.cert_dir / f"node-{h.index}-key.pem", 10001, 10001)
        self._dc("down", "-v", check=False)
        self.up = True
        self._dc("up", "-d", "--no-build", timeout=300)
        for h in self.hosts:
            cid = self._dc("ps", "-q", f"node{h.index}").strip()
            if not cid:
                raise HarnessError(f"no container for node{h.index}")
            self.containers[h.index] = cid
            fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
            self.ips[h.index] = _run(["docker", "inspect", "-f", fmt, cid]).strip()
            self.restarts[h.index] = self._restart_count(h)
        self.faults = BridgeFaults(self.hosts, self.ips, "KVS-COMPOSE-FAULTS")
        self.faults.install()

    def _restart_count(self, host: Host) -> int:
        fmt = "{{.RestartCount}}"
        return int(_run(["docker", "inspect", "-f", fmt, self.containers[host.index]]))

    def kill(self, host: Host) -> None:
        self.resume(host)
        _run(["docker", "kill", self.containers[host.index]], check=False)
        self.killed.add(host.index)

    def restart(self, host: Host) -> None:
        if host.index in self.killed:
            _run(["docker", "start", self.containers[host.index]])
            self.killed.discard(host.index)

    def pause(self, host: Host) -> None:
        # The cgroup freezer gives up ("unable to freeze") while a task sits in an
        # uninterruptible wait, such as an fsync on a busy disk: try again shortly.
        for _ in range(9):
            if _ok(["docker", "pause", self.containers[host.index]]):
                break
            time.sleep(0.3)
        else:
            _run(["docker", "pause", self.containers[host.index]])
        self.paused.add(host.index)

    def resume(self, host: Host) -> None:
        if host.index in self.paused:
            _run(["docker", "unpause", self.containers[host.index]], check=False)
            self.paused.discard(host.index)

    def exited(self) -> list[tuple[Host, int]]:
        """Containers that stopped or were restarted by their policy (a crash)."""
        out = []
        for h in self.hosts:
            cid = self.containers.get(h.index)
            if cid is None or h.index in self.killed:
                continue
            fmt = "{{.State.Running}} {{.State.ExitCode}} {{.RestartCount}}"
            running, code, count = _run(["docker", "inspect", "-f", fmt, cid]).split()
            if running != "true" or int(count) > self.restarts[h.index]:
                out.append((h, int(code)))
        return out

    def stop(self) -> None:
        if self.faults is not None:
            self.faults.remove()
        if not self.up:
            return
        for h in self.hosts:
            cid = self.containers.get(h.index)
            if cid:
                _run(["docker", "unpause", cid], check=False)
                with (self.run_dir / "nodes" / f"n{h.index}.log").open("w") as fh:
                    subprocess.run(
                        ["docker", "logs", cid], stdout=fh, stderr=subprocess.STDOUT, check=False
                    )
        self._dc("down", "-v", timeout=300, check=False)
        self.up = False


class VmDeployment(Deployment):
    """deploy/vm.sh with its own names (kvsjepvm1..N on 10.39.0.0/24, bridge virbr-kvsjep)."""

    name = "vms"
    fault_names = {
        "kill": "virsh destroy",
        "restart": "virsh start",
        "pause": "virsh suspend",
        "resume": "virsh resume",
    }

    def __init__(self, n: int, run_dir: Path, *, shards: int, replicas: int, tls: bool) -> None:
        super().__init__(n, run_dir, shards=shards, replicas=replicas, tls=tls)
        self.ips = {h.index: f"{VM_SUBNET}.{10 + h.index}" for h in self.hosts}
        self.up = False

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KVSTORE_VM_PREFIX": VM_PREFIX,
            "KVSTORE_VM_NET": VM_PREFIX,
            "KVSTORE_VM_BRIDGE": VM_BRIDGE,
            "KVSTORE_VM_SUBNET": VM_SUBNET,
            "KVSTORE_CLUSTER_ID": VM_PREFIX,
            "PYTHON": sys.executable,
        }

    def _vm_sh(self, *args: str, timeout: float, check: bool = True) -> str:
        argv = ["bash", str(REPO / "deploy" / "vm.sh"), *args]
        return _run(argv, timeout=timeout, check=check, env=self._env(), cwd=REPO)

    def _virsh(self, *args: str, check: bool = True) -> str:
        return _run(["virsh", "-q", "-c", "qemu:///system", *args], check=check, timeout=120)

    def domain(self, host: Host) -> str:
        return f"{VM_PREFIX}{host.index}"

    def start_all(self) -> None:
        extra = []
        if self.shards:
            extra += ["--shards", str(self.shards), "--replicas", str(self.replicas)]
        if self.tls:
            self.make_certs(list(self.ips.values()))
            extra += ["--tls", str(self.cert_dir)]
        if os.environ.get("KVSTORE_JEPSEN_VM_BUILD") != "1":
            extra.append("--no-build")
        self._vm_sh("down", timeout=300, check=False)
        self.up = True
        # Emulated guests on a loaded host: boots of 6-7 minutes and slow container starts
        # were seen here, so the leader wait is long (vm.sh up fails fast on anything else).
        self._vm_sh(
            *("up", "--vms", str(len(self.hosts)), "--memory", "512", "--cpus", "1"),
            *("--timeout", "3000", *extra),
            timeout=3600,
        )
        self.faults = BridgeFaults(self.hosts, self.ips, "KVS-VMS-FAULTS")
        self.faults.install()

    def kill(self, host: Host) -> None:
        self._virsh("destroy", self.domain(host), check=False)
        self.paused.discard(host.index)
        self.killed.add(host.index)

    def restart(self, host: Host) -> None:
        if host.index in self.killed:
            self._virsh("start", self.domain(host))
            self.killed.discard(host.index)

    def pause(self, host: Host) -> None:
        self._virsh("suspend", self.domain(host))
        self.paused.add(host.index)

    def resume(self, host: Host) -> None:
        if host.index in self.paused:
            self._virsh("resume", self.domain(host), check=False)
            self.paused.discard(host.index)

    def exited(self) -> list[tuple[Host, int]]:
        """Machines that are not running though no fault stopped them."""
        out = []
        for h in self.hosts:
            if h.index in self.killed:
                continue
            state = self._virsh("domstate", self.domain(h), check=False).strip()
            if state not in ("running", "paused"):
                out.append((h, -1))
        return out

    def stop(self) -> None:
        if self.faults is not None:
            self.faults.remove()
        if not self.up:
            return
        images = Path(os.environ.get("KVSTORE_VM_IMAGES", "/var/lib/libvirt/images/kvstore"))
        for h in self.hosts:
            console = images / VM_PREFIX / f"{self.domain(h)}.serial.log"
            with contextlib.suppress(OSError):
                shutil.copyfile(console, self.run_dir / "nodes" / f"n{h.index}.log")
        self._vm_sh("down", timeout=300, check=False)
        self.up = False


def open_deployment(
    backend: str, n: int, run_dir: Path, *, shards: int, replicas: int, tls: bool
) -> Deployment:
    if backend == "compose":
        return ComposeDeployment(n, run_dir, shards=shards, replicas=replicas, tls=tls)
    if backend == "vms":
        return VmDeployment(n, run_dir, shards=shards, replicas=replicas, tls=tls)
    raise HarnessError(f"unknown --hosts {backend!r} (choose from {', '.join(BACKENDS)})")
