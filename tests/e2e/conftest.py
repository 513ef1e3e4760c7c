"""Fixtures for the end-to-end tests (containers and VMs; run with --e2e, root only).

The tests start the Docker engine and libvirt themselves when they are installed but not
running (CI machines start with no daemons), stop what they started, and skip with the
reason when the machine cannot run them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .infra import DEPLOY, missing_commands, run, start_daemon, stop_daemons, timed, write_timings

E2E_IMAGE = "kvstore:e2e"


def forward_policy() -> str | None:
    if missing_commands("iptables"):
        return None
    p = run(["iptables", "-S", "FORWARD"], check=False)
    for line in p.stdout.splitlines():
        if line.startswith("-P FORWARD "):
            return line.split()[2]
    return None


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (docker, libvirt, debootstrap)")


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    _need_root()
    missing = missing_commands("dockerd", "docker", "debootstrap")
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install docker.io debootstrap)")
    policy = forward_policy()
    try:
        pids = start_daemon("docker")
    except RuntimeError as e:
        pytest.skip(f"no docker engine on this machine: {e}")
    yield
    stop_daemons(pids)
    if pids and policy == "ACCEPT":
        # dockerd sets the host's FORWARD policy to DROP; later runs on this machine
        # (netns bridges of other suites) should find it as it was.
        run(["iptables", "-P", "FORWARD", "ACCEPT"], check=False)


@pytest.fixture(scope="session")
def libvirt() -> Iterator[None]:
    _need_root()
    missing = missing_commands("libvirtd", "virsh", "qemu-system-x86_64", "qemu-img", "mkfs.ext4")
    if missing:
        pytest.skip(
            f"not installed: {', '.join(missing)} (apt-get install libvirt-daemon-system "
            "libvirt-clients qemu-system-x86 qemu-utils)"
        )
    try:
        pids = start_daemon("libvirt")
    except RuntimeError as e:
        pytest.skip(f"libvirt cannot run on this machine: {e}")
    yield
    stop_daemons(pids)


@pytest.fixture(scope="session")
def kvstore_image(docker_engine: None) -> str:
    """The image, built once per run from the Dockerfile (local base when no registry)."""
    with timed("image build (base image if needed + wheels + docker build)"):
        p = run(["bash", str(DEPLOY / "build-image.sh"), E2E_IMAGE], timeout=900)
    print(p.stderr)
    return E2E_IMAGE


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from .infra import TIMINGS

    if not TIMINGS:
        return
    terminalreporter.section("end-to-end timings")
    for name, seconds in TIMINGS.items():
        terminalreporter.write_line(f"{seconds:8.1f} s  {name}")
    path = write_timings()
    if path:
        terminalreporter.write_line(f"(also in {path})")
