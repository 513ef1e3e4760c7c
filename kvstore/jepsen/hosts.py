"""Test hosts: one network namespace per node, joined by veth pairs to a bridge.

Layout (only these addresses are ever used, plus loopback):
- bridge ``kvjbr0`` in the root namespace with 10.77.0.1/24; clients run in the root
  namespace and reach every host through it;
- namespace ``kvjN`` (N = 1, 2, ...) holds ``eth0`` = 10.77.0.(10+N), the far end of the
  veth ``kvjvN`` whose near end is a bridge port.

Faults are iptables rules inside a host's namespace (its own tables): a partition drops
packets from the other hosts' addresses; packet loss uses the ``statistic`` match (this
kernel has no tc netem). Client traffic from 10.77.0.1 is never dropped: partitions are
between nodes, as in Jepsen.

Invariant: everything this module creates carries the ``kvj`` prefix, and
:func:`clean_leftovers` removes all of it (processes in the namespaces first), so a crashed
run is cleaned by the next one. One run at a time holds :data:`LOCK_PATH`.

Slots: ``KVSTORE_JEPSEN_SLOT=S`` (1-9) gives a run its own names, subnet and lock
(``kvjbrS``, ``kvjsS-N``, ``10.77.S.0/24``), so a long campaign in one slot does not lock
out other runs; slot 0 (the default) is the layout above. Cleanup only touches its slot.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


def _slot() -> int:
    raw = os.environ.get("KVSTORE_JEPSEN_SLOT", "0").strip() or "0"
    if not raw.isdigit() or not 0 <= int(raw) <= 9:
        raise ValueError(f"KVSTORE_JEPSEN_SLOT must be a digit 0-9, not {raw!r}")
    return int(raw)


SLOT = _slot()
BRIDGE = f"kvjbr{SLOT}"
NS_PREFIX = "kvj" if SLOT == 0 else f"kvjs{SLOT}-"
VETH_PREFIX = "kvjv" if SLOT == 0 else f"kvjs{SLOT}v"
SUBNET = f"10.77.{SLOT}"
HOST_IP = f"{SUBNET}.1"
LOCK_PATH = Path(
    "/run/lock/kvstore-jepsen.lock" if SLOT == 0 else f"/run/lock/kvstore-jepsen-{SLOT}.lock"
)
# the tmpfs source name marks a slot's data disks, so cleanup never unmounts another slot's
DISK_SOURCE = f"kvjdisk{SLOT}"
_FORWARD_RULE = ("FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")


class HarnessError(RuntimeError):
    """The harness could not set up or drive the test hosts."""


class LockBusy(HarnessError):
    """Another run holds the machine-wide run lock (nothing was started)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Host:
    index: int  # 1-based, also the node id

    @property
    def ns(self) -> str:
        return f"{NS_PREFIX}{self.index}"

    @property
    def veth(self) -> str:
        return f"{VETH_PREFIX}{self.index}"

    @property
    def ip(self) -> str:
        return f"{SUBNET}.{10 + self.index}"


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise HarnessError(
            f"{argv[0]} not found: install iproute2 and iptables (tests/apt-packages.txt)"
        ) from None
    except subprocess.TimeoutExpired:
        raise HarnessError(f"timed out: {' '.join(argv)}") from None
    if check and done.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.returncode}")
    return done


def in_ns(host: Host, argv: Sequence[str]) -> list[str]:
    """The argv that runs ``argv`` inside the host's namespace."""
    return ["ip", "netns", "exec", host.ns, *argv]


def require_root() -> None:
    if os.geteuid() != 0:
        raise HarnessError("the Jepsen harness needs root (network namespaces, iptables)")
    for tool in ("ip", "iptables"):
        _run(["which", tool])


@contextlib.contextmanager
def run_lock() -> Iterator[None]:
    """Holds the machine-wide lock: the namespace and bridge names are fixed."""
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_PATH.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy(f"another Jepsen run holds {LOCK_PATH}") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _our_namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(NS_PREFIX) and n[len(NS_PREFIX) :].isdigit()]


def _our_links() -> list[str]:
    out = _run(["ip", "-o", "link", "show"], check=False).stdout
    links = []
    for line in out.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name == BRIDGE or (
                name.startswith(VETH_PREFIX) and name[len(VETH_PREFIX) :].isdigit()
            ):
                links.append(name)
    return links


def kill_namespace_processes(ns: str) -> int:
    """SIGKILLs (after SIGCONT) every process in a namespace; returns how many."""
    out = _run(["ip", "netns", "pids", ns], check=False).stdout
    pids = [int(p) for p in out.split() if p.isdigit()]
    for pid in pids:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    return len(pids)


def clean_leftovers() -> list[str]:
    """Removes every ``kvj`` namespace, link and the bridge's FORWARD rule. Idempotent."""
    done = []
    for ns in _our_namespaces():
        killed = kill_namespace_processes(ns)
        _run(["ip", "netns", "del", ns], check=False)
        done.append(f"removed namespace {ns} (killed {killed} processes)")
    for link in _our_links():
        if link != BRIDGE:
            _run(["ip", "link", "del", link], check=False)
            done.append(f"removed link {link}")
    if BRIDGE in _our_links():
        _run(["ip", "link", "del", BRIDGE], check=False)
        done.append(f"removed bridge {BRIDGE}")
    while _run(["iptables", "-C", *_FORWARD_RULE], check=False).returncode == 0:
        _run(["iptables", "-D", *_FORWARD_RULE], check=False)
        done.append(f"removed iptables FORWARD rule for {BRIDGE}")
    for mountpoint in _our_disks():
        _run(["umount", "-l", mountpoint], check=False)
        done.append(f"unmounted the tmpfs disk {mountpoint}")
    return done


def _our_disks() -> list[str]:
    """tmpfs data directories of the disk nemesis (``.../nodes/nN/data``) still mounted."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in mounts:
        parts = line.split()
        if (
            len(parts) > 2
            and parts[2] == "tmpfs"
            # slot 0 also takes plain "tmpfs" sources, left by runs from before slots
            and (parts[0] == DISK_SOURCE or (SLOT == 0 and parts[0] == "tmpfs"))
            and re.search(r"/nodes/n\d+/data$", parts[1])
        ):
            out.append(parts[1])
    return out


class DropFaults:
    """Network faults as DROP rules, one per (sender, receiver) pair of hosts: a cut drops
    one direction, a partition cuts each component off from the other hosts, a loss drops
    a random fraction. Clients are never cut. Subclasses say where a rule goes."""

    hosts: list[Host]

    def _drop(self, src: Host, dst: Host, *match: str) -> None:
        """Drop what ``dst`` receives from ``src`` (and matches ``match``)."""
        raise NotImplementedError

    def cut(self, host: Host, others: Sequence[Host]) -> None:
        """``host`` receives nothing from ``others`` (one direction)."""
        for o in others:
            if o != host:
                self._drop(o, host)

    def partition(self, components: Sequence[Sequence[Host]]) -> None:
        """Each host hears only the hosts of its own component (and the clients)."""
        for comp in components:
            others = [h for h in self.hosts if h not in comp]
            for h in comp:
                self.cut(h, others)

    def lose(self, host: Host, probability: float) -> None:
        """Drops a random fraction of the packets ``host`` receives from other hosts."""
        for o in self.hosts:
            if o != host:
                self._drop(
                    o,
                    host,
                    *("-m", "statistic", "--mode", "random", "--probability"),
                    f"{probability:.3f}",
                )


class Network(DropFaults):
    """The bridge and the hosts of one run. Use as a context manager."""

    def __init__(self, n: int) -> None:
        if not 1 <= n <= 200:
            raise ValueError("between 1 and 200 hosts")
        self.hosts = [Host(index=i) for i in range(1, n + 1)]

    def __enter__(self) -> Network:
        clean_leftovers()
        try:
            self.create()
        except BaseException:
            clean_leftovers()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        clean_leftovers()

    def create(self) -> None:
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])
        # with br_netfilter loaded and FORWARD policy DROP (docker/libvirt), bridged frames
        # between ports are filtered: let the bridge talk to itself
        _run(["iptables", "-I", *_FORWARD_RULE])
        for h in self.hosts:
            _run(["ip", "netns", "add", h.ns])
            _run(
                ["ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.ns]
            )
            _run(["ip", "link", "set", h.veth, "master", BRIDGE, "up"])
            _run(["ip", "-n", h.ns, "addr", "add", f"{h.ip}/24", "dev", "eth0"])
            _run(["ip", "-n", h.ns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", h.ns, "link", "set", "lo", "up"])

    def iptables(self, host: Host, *args: str) -> None:
        _run(in_ns(host, ["iptables", "-w", *args]))

    def _drop(self, src: Host, dst: Host, *match: str) -> None:
        self.iptables(dst, "-A", "INPUT", "-s", src.ip, *match, "-j", "DROP")

    def heal(self, hosts: Sequence[Host] | None = None) -> None:
        for h in hosts if hosts is not None else self.hosts:
            self.iptables(h, "-F", "INPUT")
            self.iptables(h, "-F", "OUTPUT")
