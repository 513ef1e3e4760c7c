"""The README's Deployment section, typed as a new user types it, in a fresh clone.

The commands are read from README.md (the ```bash blocks of "A 3-node cluster with
docker-compose" and "VMs with libvirt"), not copied here, so the README cannot drift from
what works. The clone lives in a fresh 0700 directory, as a clone under /root would: libvirt's
QEMU user cannot enter it. No PYTHON and no venv are given: `vm.sh up` must find or make
what it needs. Only the environment differs from a user's shell, to keep a user's own
deployment on this machine untouched: the image tag, the published ports, the VM names and
subnet, the build cache (shared with the other VM tests: the debootstrap stage is the same).
The image tag is the other e2e tests' (kvstore:e2e): `deploy/build-image.sh` keeps an image
built from the same source (same commit tree, same uncommitted diff), as it would for a user
running the commands twice, so the clone's build step costs seconds in CI.

Reduced (--e2e): the VM block boots 1 VM instead of 3; --vm-full boots the README's 3.
It clones HEAD: uncommitted changes are not part of the run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.client import Client, KVError

from .conftest import E2E_IMAGE
from .infra import REPO, free_ports, run, timed, wait_for, wait_leader, write_and_read

E2E = pytest.mark.e2e
SLOW_TIMEOUT = pytest.mark.timeout(3000)

E2E_CACHE = REPO / "deploy" / ".cache" / "e2e"
IMAGE = E2E_IMAGE  # built from the same source by the other tests: the clone reuses it
VM_PREFIX, VM_SUBNET = "kvsreadme", "10.37.3"


def readme_blocks(text: str) -> dict[str, list[str]]:
    """Subsection title -> command lines of its bash blocks, within '## Deployment'."""
    section = text.split("\n## Deployment\n", 1)[1].split("\n## ", 1)[0]
    out: dict[str, list[str]] = {}
    for part in section.split("\n### ")[1:]:
        title = part.splitlines()[0].strip()
        lines: list[str] = []
        for block in re.findall(r"```bash\n(.*?)```", part, flags=re.S):
            lines += [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
        if lines:
            out[title] = lines
    return out


def block(title_start: str) -> list[str]:
    blocks = readme_blocks((REPO / "README.md").read_text())
    found = [lines for title, lines in blocks.items() if title.startswith(title_start)]
    assert found, f"README's Deployment section has no block under '{title_start}...'"
    return found[0]


def test_readme_blocks_parse() -> None:
    """The deployment blocks exist and bring a cluster up and down (no root needed)."""
    compose = block("A 3-node cluster with docker-compose")
    sharded = block("A sharded 5-node cluster with mutual TLS")
    assert any("KVSTORE_SHARDS=4" in ln and "docker-compose.5.tls.yml up" in ln for ln in sharded)
    assert any("kvstore shard list" in ln and "--cacert" in ln for ln in sharded)
    vms = block("VMs with libvirt")
    assert any("docker-compose up" in ln for ln in compose)
    assert any("docker-compose down -v" in ln for ln in compose)
    assert any("vm.sh up --vms 3" in ln for ln in vms)
    assert any("vm.sh down" in ln for ln in vms)


@pytest.fixture
def clone() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (docker, libvirt, debootstrap)")
    parent = Path(tempfile.mkdtemp(prefix="kvs-readme-"))  # 0700, like /root
    dest = parent / "kvstore"
    run(["git", "clone", "-q", str(REPO), str(dest)])
    yield dest
    shutil.rmtree(parent, ignore_errors=True)


def user_env(extra: dict[str, str]) -> dict[str, str]:
    """A root shell's environment: none of this test run's venv or Python settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHON", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
        and not k.startswith("KVSTORE_")
    }
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["DEBIAN_FRONTEND"] = "noninteractive"
    return {**env, **extra}


def sh(line: str, cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Runs one README line with bash in the clone, as typed."""
    p = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", line],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert p.returncode == 0, (
        f"README line failed (exit {p.returncode}): {line}\n--- stdout\n{p.stdout[-3000:]}"
        f"\n--- stderr\n{p.stderr[-5000:]}"
    )
    return p.stdout


def apt_lock_wait(tmp: Path) -> str:
    """APT_CONFIG that waits for the dpkg lock (others may hold it) instead of failing."""
    conf = tmp / "apt.conf"
    conf.write_text('DPkg::Lock::Timeout "600";\n')
    return str(conf)


@E2E
@SLOW_TIMEOUT
def test_readme_compose(kvstore_image: str, clone: Path, tmp_path: Path) -> None:
    ports = free_ports(6)
    env = user_env(
        {
            "KVSTORE_IMAGE": IMAGE,
            "COMPOSE_PROJECT_NAME": "kvsreadme",
            "APT_CONFIG": apt_lock_wait(tmp_path),
            **{f"KVSTORE_PORT_{i + 1}": str(ports[i]) for i in range(3)},
            **{f"KVSTORE_METRICS_PORT_{i + 1}": str(ports[3 + i]) for i in range(3)},
        }
    )
    endpoints = [f"127.0.0.1:{p}" for p in ports[:3]]
    lines = block("A 3-node cluster with docker-compose")
    try:
        for line in lines:
            with timed(f"readme compose: {line.split('#')[0].strip()[:60]}"):
                out = sh(line, clone, env, timeout=1200)
            if "docker-compose up" in line:
                with timed("readme compose: a leader after up"):
                    wait_leader(endpoints, timeout=120)
                with Client(endpoints, timeout=5.0) as c:
                    write_and_read(c, "readme", 10)
            if "docker-compose ps" in line:
                assert all(f"node{i}" in out for i in (1, 2, 3)), out
    finally:
        sh("docker-compose down -v || true", clone, env, timeout=300)


@E2E
@SLOW_TIMEOUT
def test_readme_sharded_compose_with_tls(kvstore_image: str, clone: Path, tmp_path: Path) -> None:
    """The 5-node sharded cluster with mutual TLS, as the README types it; only the subnet
    moves (10.38.5 -> SUBNET, in the lines and by KVSTORE_SUBNET) to keep a user's own
    5-node deployment untouched, and `kvstore` is this run's (the README's is the clone's
    .venv)."""
    subnet = "10.38.57"
    ports = free_ports(10)
    env = user_env(
        {
            "KVSTORE_IMAGE": IMAGE,
            "COMPOSE_PROJECT_NAME": "kvsreadme5",
            "KVSTORE_SUBNET": subnet,
            **{f"KVSTORE_PORT_{i + 1}": str(ports[i]) for i in range(5)},
            **{f"KVSTORE_METRICS_PORT_{i + 1}": str(ports[5 + i]) for i in range(5)},
        }
    )
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    endpoints = [f"{subnet}.{10 + i}:7001" for i in range(1, 6)]
    certs = clone / "kvstore-certs"
    lines = [ln.replace("10.38.5.", f"{subnet}.") for ln in block("A sharded 5-node cluster")]
    assert "10.38.5." not in " ".join(lines) and f"{subnet}.15" in lines[0]

    def tls_client() -> Client:
        return Client(
            endpoints,
            timeout=10.0,
            cacert=certs / "ca.pem",
            cert=certs / "admin.pem",
            key=certs / "admin-key.pem",
        )

    try:
        for line in lines:
            with timed(f"readme sharded compose: {line.split('#')[0].strip()[:60]}"):
                out = sh(line, clone, env, timeout=600)
            if " up -d" in line:
                with timed("readme sharded compose: 4 shards led after up"), tls_client() as c:

                    def led() -> bool:
                        m = c.shards()
                        return len(m) == 4 and all(d["leader"] for d in m)

                    wait_for("4 shards, each with a leader", led, 120)
                    keys = ["apple", "kiwi", "pear", "zebra"]  # one in each shard
                    for k in keys:
                        c.put(k, k.upper())
                    assert [k for k, _ in c.scan("a", "zz", 10)] == [k.encode() for k in keys]
                with Client(endpoints, timeout=3.0) as plain, pytest.raises(KVError):
                    plain.get("apple")  # plaintext is refused
            if "kvstore shard list" in line:
                rows = out.splitlines()[1:]
                assert len(rows) == 4 and all(r.split()[-2] == "1" for r in rows), out
    finally:
        down = "docker-compose -f docker-compose.yml -f docker-compose.5.yml down -v || true"
        sh(down, clone, env, timeout=300)


@E2E
@SLOW_TIMEOUT
def test_readme_vms(
    request: pytest.FixtureRequest, libvirt: None, kvstore_image: str, clone: Path, tmp_path: Path
) -> None:
    vms = 3 if request.config.getoption("vm_full") else 1
    env = user_env(
        {
            "KVSTORE_IMAGE": IMAGE,
            "APT_CONFIG": apt_lock_wait(tmp_path),
            "KVSTORE_DEPLOY_CACHE": str(E2E_CACHE),
            "KVSTORE_VM_PREFIX": VM_PREFIX,
            "KVSTORE_VM_NET": VM_PREFIX,
            "KVSTORE_VM_BRIDGE": f"virbr-{VM_PREFIX[-8:]}",
            "KVSTORE_VM_SUBNET": VM_SUBNET,
            "KVSTORE_CLUSTER_ID": VM_PREFIX,
        }
    )
    endpoints = ",".join(f"{VM_SUBNET}.{10 + i}:7001" for i in range(1, vms + 1))

    def adapt(line: str) -> str:
        line = line.replace("--vms 3", f"--vms {vms}")
        return re.sub(r"--endpoints \S+", f"--endpoints {endpoints}", line)

    lines = [adapt(ln) for ln in block("VMs with libvirt")]
    try:
        for line in lines:
            with timed(f"readme vms ({vms}): {line.split('#')[0].strip()[:60]}"):
                sh(line, clone, env, timeout=2400)
            if "kvstore put" in line:
                with Client(endpoints.split(","), timeout=30.0) as c:
                    assert c.get("greeting", read_mode="strong") == b"hello"
        assert (clone / ".venv" / "bin" / "kvstore").exists(), "vm.sh up made no .venv"
        left = run(["virsh", "-q", "-c", "qemu:///system", "list", "--all", "--name"]).stdout
        assert VM_PREFIX not in left, left
    finally:
        sh("bash deploy/vm.sh down || true", clone, env, timeout=300)
