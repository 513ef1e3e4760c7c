"""The libvirt deployment end to end (deploy/vm.sh): podman containers in emulated guests.

- test_vm_joins_host_cluster (--e2e, in CI): one VM whose node is the third member of a
  cluster with two host processes; it boots, joins and catches up, and then stands in the
  quorum when a host node is killed.
- test_shard_moves_to_a_vm_and_is_repaired_when_the_vm_is_lost (--e2e --vm-full): a
  sharded cluster of 3 host nodes and 1 VM; a shard move to the VM, then the VM destroyed
  for good and its replicas re-created on the host nodes.
- test_vm_with_mutual_tls (--e2e --vm-full): `vm.sh up --vms 1 --tls DIR` (sharded), a TLS
  client and `vm.sh status` work, a plaintext client is refused.
- test_three_vms_survive_leader_destroy (--e2e --vm-full): `vm.sh up` with 3 VMs, the
  client from the host against the VMs' addresses, `virsh destroy` of the leader's VM,
  writes resume, the VM starts again and its node catches up, `vm.sh down`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from kvstore.client import Client, KVError

from .infra import (
    DEPLOY,
    REPO,
    SLOW_ELECTION_TICKS,
    SLOW_HEARTBEAT_TICKS,
    SLOW_TICK_MS,
    caught_up,
    free_ports,
    leader_of,
    put_until_ok,
    run,
    timed,
    wait_for,
    write_and_read,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2700)]

E2E_CACHE = DEPLOY / ".cache" / "e2e"
VM_IMAGES = Path(os.environ.get("KVSTORE_VM_IMAGES", "/var/lib/libvirt/images/kvstore"))
SLOW = [
    "--tick-ms",
    str(SLOW_TICK_MS),
    "--election-ticks",
    str(SLOW_ELECTION_TICKS),
    "--heartbeat-ticks",
    str(SLOW_HEARTBEAT_TICKS),
]
# Guests boot in ~30 s on an idle machine; the node then starts under emulation.
BOOT_TIMEOUT = 900
VM_SH = str(DEPLOY / "vm.sh")
# One operation against emulated guests on a busy host may outlast the client's deadline.
OP_TIMEOUT = 180.0


def deployment_env(name: str, subnet: str, image: str) -> dict[str, str]:
    return {
        "KVSTORE_DEPLOY_CACHE": str(E2E_CACHE),
        "KVSTORE_VM_PREFIX": name,
        "KVSTORE_VM_NET": name,
        "KVSTORE_VM_BRIDGE": f"virbr-{name[-8:]}",
        "KVSTORE_VM_SUBNET": subnet,
        "KVSTORE_CLUSTER_ID": name,
        "KVSTORE_IMAGE": image,
        "PYTHON": sys.executable,
    }


@pytest.fixture(scope="session")
def guest_disk(kvstore_image: str, libvirt: None) -> str:
    """The guest disk with the image loaded, built once per run (cached under
    deploy/.cache/e2e, apart from a user's deployment)."""
    env = {"KVSTORE_DEPLOY_CACHE": str(E2E_CACHE)}
    with timed("guest disk build (debootstrap if not cached + image load + mkfs)"):
        p = run(
            ["bash", str(DEPLOY / "build-guest-image.sh"), "--image", kvstore_image],
            env=env,
            timeout=1500,
        )
    print(p.stderr)
    return kvstore_image


@pytest.fixture
def vm_sh(request: pytest.FixtureRequest) -> Iterator[list[tuple[str, dict[str, str]]]]:
    """Deployments the test brings up; each is brought down afterwards, logs shown on failure."""
    made: list[tuple[str, dict[str, str]]] = []
    yield made
    for name, env in made:
        rep = getattr(request.node, "rep_call", None)
        if rep is None or rep.failed:
            for log in sorted((VM_IMAGES / name).glob("*.serial.log")):
                tail = log.read_bytes()[-3000:].decode(errors="replace").replace("\r", "")
                print(f"--- {log.name}\n{tail}")
        with timed(f"vm.sh down ({name})"):
            run([VM_SH, "down"], env=env, check=False, timeout=300)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]


class HostNodes:
    """kvstore serve processes on the host, members of a cluster with VM nodes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(
        self, node_id: int, listen: str, peers: str, cluster_id: str, extra: Sequence[str] = ()
    ) -> None:
        log = open(self.root / f"node{node_id}.log", "ab")  # noqa: SIM115 (the child owns it)
        argv = [
            sys.executable,
            "-m",
            "kvstore.cli",
            "serve",
            "--id",
            str(node_id),
            "--listen",
            listen,
            "--peers",
            peers,
            "--data-dir",
            str(self.root / f"node{node_id}"),
            "--cluster-id",
            cluster_id,
            *SLOW,
            *extra,
        ]
        self.procs[node_id] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ}
        )
        log.close()

    def kill(self, node_id: int) -> None:
        p = self.procs[node_id]
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)

    def close(self) -> None:
        for node_id in list(self.procs):
            self.kill(node_id)

    def logs(self) -> str:
        out = []
        for node_id in self.procs:
            text = (self.root / f"node{node_id}.log").read_text(errors="replace")
            out.append(f"--- host node{node_id}\n{text[-2000:]}")
        return "\n".join(out)


UP_ONE_VM = [VM_SH, "up", "--vms", "1", "--no-build", "--no-wait", "--host-peers"]


def host_nodes(subnet: str, n: int) -> tuple[str, list[str]]:
    """The --peers value and the endpoints of ``n`` host nodes on the deployment's
    bridge address (the guests reach the host there)."""
    host_ip = f"{subnet}.1"
    endpoints = [f"{host_ip}:{p}" for p in free_ports(n)]
    return ",".join(f"{i}={ep}" for i, ep in enumerate(endpoints, start=1)), endpoints


def up_one_vm(
    vm_sh: list[tuple[str, dict[str, str]]],
    name: str,
    env: dict[str, str],
    host_peers: str,
    what: str,
    extra: Sequence[str] = (),
) -> None:
    """Define and start one guest that joins the host nodes; ``vm_sh`` tears it down."""
    vm_sh.append((name, env))
    with timed(what):
        run(
            [*UP_ONE_VM, host_peers, *extra, *SLOW],
            env=env,
            timeout=300,
        )


def test_vm_joins_host_cluster(guest_disk: str, vm_sh: list, tmp_path: Path) -> None:
    name, subnet = "kvse2e-join", "10.37.1"
    env = deployment_env(name, subnet, guest_disk)
    host_peers, host_endpoints = host_nodes(subnet, 2)
    vm_endpoint = f"{subnet}.11:7001"
    up_one_vm(
        vm_sh, name, env, host_peers, "vm join: vm.sh up (network + 1 domain defined and started)"
    )
    nodes = HostNodes(tmp_path)
    try:
        peers = f"{host_peers},3={vm_endpoint}"
        nodes.start(1, host_endpoints[0], peers, name)
        nodes.start(2, host_endpoints[1], peers, name)
        with Client([*host_endpoints, vm_endpoint], timeout=30.0) as c:
            leader = wait_for("a leader among the host nodes", lambda: leader_of(c.status()), 120)
            data = write_and_read(c, "before-vm", 10, OP_TIMEOUT)
            with timed("vm join: guest boots, its node joins and catches up"):
                wait_for(
                    "the VM's node to catch up",
                    lambda: caught_up(vm_endpoint, host_endpoints[leader - 1], data),
                    BOOT_TIMEOUT,
                    every=3.0,
                )
            # The VM's vote is now needed: with a host node gone, quorum is {host, VM}.
            nodes.kill(leader)
            with timed("vm join: writes resume with the VM node in the quorum"):
                put_until_ok(c, "after-kill", "x", timeout=300)
            data |= {"after-kill": "x"} | write_and_read(c, "after-kill", 10, OP_TIMEOUT)
            for k, v in data.items():
                assert c.get(k, read_mode="strong") == v.encode(), k
    except BaseException:
        print(nodes.logs())
        raise
    finally:
        nodes.close()


def test_three_vms_survive_leader_destroy(
    request: pytest.FixtureRequest, guest_disk: str, vm_sh: list
) -> None:
    if not request.config.getoption("vm_full"):
        pytest.skip("the full 3-VM test runs with --vm-full")
    name, subnet = "kvse2e-full", "10.37.2"
    env = deployment_env(name, subnet, guest_disk)
    endpoints = [f"{subnet}.{10 + i}:7001" for i in (1, 2, 3)]
    virsh = ["virsh", "-q", "-c", "qemu:///system"]
    vm_sh.append((name, env))
    with timed("vm full: vm.sh up --vms 3 until a leader"):
        run(
            [VM_SH, "up", "--vms", "3", "--no-build", "--timeout", str(BOOT_TIMEOUT), *SLOW],
            env=env,
            timeout=BOOT_TIMEOUT + 300,
        )
    with Client(endpoints, timeout=30.0) as c:
        leader = wait_for("a leader", lambda: leader_of(c.status()), 120)
        data = write_and_read(c, "before", 10, OP_TIMEOUT)
        run([*virsh, "destroy", f"{name}{leader}"])
        with timed("vm full: writes resume after virsh destroy of the leader's VM"):
            put_until_ok(c, "after-destroy", "x", timeout=300)
        data |= {"after-destroy": "x"} | write_and_read(c, "after", 10, OP_TIMEOUT)
        new_leader = wait_for("a new leader", lambda: leader_of(c.status()), 120)
        assert new_leader != leader
        with timed("vm full: destroyed VM boots again and its node catches up"):
            run([*virsh, "start", f"{name}{leader}"])
            wait_for(
                f"{name}{leader} to catch up",
                lambda: caught_up(endpoints[leader - 1], endpoints[new_leader - 1], data),
                BOOT_TIMEOUT,
                every=3.0,
            )
        for k, v in data.items():
            got = wait_for(f"read of {k}", lambda k=k: [c.get(k, read_mode="strong")], OP_TIMEOUT)
            assert got[0] == v.encode(), k


def _groups(c: Client, skip: set[int]) -> dict[int, dict[str, Any]]:
    """Each consensus group (0 = the shard map) as its leader reports it, from live nodes."""
    out: dict[int, dict[str, Any]] = {}
    for n in c.status():
        if not n.get("reachable") or n["id"] in skip:
            continue
        for g in n["groups"]:
            if g["role"] == "leader":
                out[g["group"]] = g
    return out


def _cli(endpoints: list[str], *args: str, timeout: float = 900, check: bool = True) -> str:
    """A kvstore command; with check=False, "" when it fails (for wait_for)."""
    argv = [sys.executable, "-m", "kvstore.cli", *args, "--endpoints", ",".join(endpoints)]
    p = run(argv, timeout=timeout, check=check)
    return p.stdout if p.returncode == 0 else ""


def test_shard_moves_to_a_vm_and_is_repaired_when_the_vm_is_lost(
    request: pytest.FixtureRequest, guest_disk: str, vm_sh: list, tmp_path: Path
) -> None:
    """A sharded cluster of 3 host nodes and 1 VM (node 4): `kvstore shard move` puts a
    replica on the VM, which catches up and leads the shard; then the VM is destroyed and
    undefined for good, and after --down-after the cluster re-creates its replicas on the
    host nodes with every write still there."""
    if not request.config.getoption("vm_full"):
        pytest.skip("the sharded VM test runs with --vm-full")
    name, subnet, shards, down_after = "kvse2e-shard", "10.37.4", 2, 20
    env = deployment_env(name, subnet, guest_disk)
    host_peers, host_endpoints = host_nodes(subnet, 3)
    vm_endpoint = f"{subnet}.11:7001"
    sharding = ["--shards", str(shards), "--replicas", "3", "--down-after", str(down_after)]
    up_one_vm(vm_sh, name, env, host_peers, "vm shard: vm.sh up (1 domain, sharded)", sharding)
    nodes = HostNodes(tmp_path)
    try:
        peers = f"{host_peers},4={vm_endpoint}"
        for i, ep in enumerate(host_endpoints, start=1):
            nodes.start(i, ep, peers, name, extra=sharding)
        endpoints = [*host_endpoints, vm_endpoint]
        with Client(endpoints, timeout=30.0) as c:
            data = write_and_read(c, "shard", 26, OP_TIMEOUT)
            with timed("vm shard: the VM boots and its node joins the shard map"):
                wait_for(
                    "the VM's node to answer",
                    lambda: [s for s in c.status() if s["id"] == 4 and s.get("reachable")],
                    BOOT_TIMEOUT,
                    every=3.0,
                )
            gs = wait_for(
                "every group led", lambda: (g := _groups(c, set())) and len(g) > shards and g, 300
            )
            sid = min(g for g in gs if g != 0)
            if 4 in gs[sid]["voters"]:  # move it off the VM first, so the move is *to* the VM
                away = next(n for n in (1, 2, 3) if n not in gs[sid]["voters"])
                _cli(endpoints, "shard", "move", str(sid), "--from", "4", "--to", str(away))
            frm = next(n for n in _groups(c, set())[sid]["voters"] if n != 4)
            with timed("vm shard: kvstore shard move to the VM"):
                _cli(endpoints, "shard", "move", str(sid), "--from", str(frm), "--to", "4")
            assert 4 in _groups(c, set())[sid]["voters"]
            with timed("vm shard: the VM's replica takes the shard's leadership"):
                wait_for(
                    "a leadership transfer to the VM",
                    lambda: (
                        "4"
                        in _cli(
                            endpoints,
                            "shard",
                            "transfer-leader",
                            str(sid),
                            "--to",
                            "4",
                            "--timeout",
                            "30",
                        )
                    ),
                    600,
                    every=5.0,
                )
            for k, v in data.items():
                got = wait_for(
                    f"read of {k}", lambda k=k: [c.get(k, read_mode="strong")], OP_TIMEOUT
                )
                assert got[0] == v.encode(), k

            virsh = ["virsh", "-q", "-c", "qemu:///system"]
            run([*virsh, "destroy", f"{name}1"])
            run([*virsh, "undefine", f"{name}1"])
            with timed("vm shard: replicas of the lost VM re-created on the host nodes"):
                wait_for(
                    "repair without node 4",
                    lambda: (
                        (g := _groups(c, {4}))
                        and set(g) >= set(range(shards + 1))
                        and all(
                            len(x["voters"]) == 3 and 4 not in x["voters"] and not x["learners"]
                            for x in g.values()
                        )
                    ),
                    down_after + 600,
                    every=3.0,
                )
            data |= write_and_read(c, "after-loss", 10, OP_TIMEOUT)
            for k, v in data.items():
                got = wait_for(
                    f"read of {k}", lambda k=k: [c.get(k, read_mode="strong")], OP_TIMEOUT
                )
                assert got[0] == v.encode(), k
    except BaseException:
        print(nodes.logs())
        raise
    finally:
        nodes.close()


def test_vm_with_mutual_tls(
    request: pytest.FixtureRequest, guest_disk: str, vm_sh: list, tmp_path: Path
) -> None:
    """`vm.sh up --tls DIR` (issue 14): the certificates are made for the VM's address,
    the node serves mutual TLS (sharded here: 2 shards, 1 replica), `vm.sh status` and a
    TLS client work, a plaintext client is refused."""
    if not request.config.getoption("vm_full"):
        pytest.skip("the TLS VM test runs with --vm-full")
    name, subnet = "kvse2e-tls", "10.37.5"
    env = deployment_env(name, subnet, guest_disk)
    certs = tmp_path / "vm-certs"
    endpoint = f"{subnet}.11:7001"
    vm_sh.append((name, env))
    with timed("vm tls: vm.sh up --vms 1 --tls until a leader (over TLS)"):
        run(
            [
                *(VM_SH, "up", "--vms", "1", "--memory", "512", "--no-build"),
                *("--tls", str(certs), "--shards", "2", "--replicas", "1"),
                *("--timeout", str(BOOT_TIMEOUT), *SLOW),
            ],
            env=env,
            timeout=BOOT_TIMEOUT + 300,
        )
    assert (certs / "ca.pem").exists() and (certs / "node-1.pem").exists()
    status = run([VM_SH, "status"], env=env, timeout=300).stdout
    assert "leader" in status, status
    tls = {"cacert": certs / "ca.pem", "cert": certs / "admin.pem", "key": certs / "admin-key.pem"}
    with Client([endpoint], timeout=30.0, **tls) as c:
        data = write_and_read(c, "a-tls", 5, OP_TIMEOUT)  # the first shard
        data |= write_and_read(c, "z-tls", 5, OP_TIMEOUT)  # the second
        assert len(c.shards()) == 2
    with Client([endpoint], timeout=5.0) as plain, pytest.raises(KVError):
        plain.get(next(iter(data)))
