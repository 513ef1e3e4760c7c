"""Real namespaces, veths, bridge and iptables, with a trivial server (needs root, --jepsen)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvstore.jepsen.cluster import PORT, Cluster, NodeSpec
from kvstore.jepsen.hosts import Network, clean_leftovers, in_ns

pytestmark = [
    pytest.mark.jepsen,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("iptables") is None, reason="needs root and iptables"
    ),
]

TRIVIAL = f"{sys.executable} -m http.server --bind {{ip}} {{port}}"


def _reach(net: Network, src: int, dst: int) -> bool:
    """Whether host ``src`` can open a TCP connection to host ``dst``'s server."""
    code = (
        f"import socket,sys\nsocket.create_connection(('{net.hosts[dst].ip}', {PORT}), 1).close()\n"
    )
    done = subprocess.run(
        in_ns(net.hosts[src], [sys.executable, "-c", code]), capture_output=True, timeout=10
    )
    return done.returncode == 0


def test_partition_heal_kill_pause_and_cleanup(tmp_path: Path) -> None:
    with Network(3) as net, Cluster(net.hosts, tmp_path, NodeSpec(server_cmd=TRIVIAL)) as c:
        c.start_all()
        c.wait_listening(timeout=20)
        assert _reach(net, 1, 0)
        net.partition([[net.hosts[0]], net.hosts[1:]])
        assert not _reach(net, 1, 0)
        assert _reach(net, 1, 2)
        socket.create_connection((net.hosts[0].ip, PORT), 1).close()  # clients unaffected
        net.heal()
        assert _reach(net, 1, 0)

        c.kill(net.hosts[0])
        assert not c.alive(net.hosts[0])
        c.restart(net.hosts[0])
        c.wait_listening(timeout=20)

        c.pause(net.hosts[2])
        stat = Path(f"/proc/{c.procs[3].pid}/stat")
        deadline = time.monotonic() + 5
        while stat.read_text().split()[2] != "T" and time.monotonic() < deadline:
            time.sleep(0.01)  # the stop is delivered asynchronously
        assert stat.read_text().split()[2] == "T"
        c.resume(net.hosts[2])
        assert _reach(net, 0, 2)
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "kvj" not in listing
    assert all(p.poll() is not None for p in c.procs.values())


def test_clean_removes_leftovers_of_a_crashed_run() -> None:
    net = Network(2)
    net.create()  # no context manager: as if the harness had been killed
    try:
        done = clean_leftovers()
        assert any("kvj1" in line for line in done)
        assert any("kvjbr0" in line for line in done)
    finally:
        clean_leftovers()
    assert clean_leftovers() == []


def test_lossy_link_drops_some_packets(tmp_path: Path) -> None:
    with Network(2) as net, Cluster(net.hosts, tmp_path, NodeSpec(server_cmd=TRIVIAL)) as c:
        c.start_all()
        c.wait_listening(timeout=20)
        net.lose(net.hosts[0], 1.0)
        t0 = time.monotonic()
        assert not _reach(net, 1, 0)
        assert time.monotonic() - t0 >= 0.9
        net.heal()
        assert _reach(net, 1, 0)
