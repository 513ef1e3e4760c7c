"""The compose cluster end to end: docker-compose up, the client library against the
published ports, kill the leader's container, writes resume, the node restarts and
catches up, a crashed container is restarted by its restart policy, down -v."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from kvstore.client import Client

from .infra import caught_up as node_caught_up
from .infra import (
    free_ports,
    leader_of,
    put_until_ok,
    run,
    timed,
    wait_for,
    wait_leader,
    write_and_read,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.skip("neither docker-compose (v1) nor the docker compose plugin (v2) is installed")


def test_compose_cluster_survives_leader_kill(kvstore_image: str) -> None:
    compose = compose_command()
    project = f"kvse2e{os.getpid()}"
    ports = free_ports(6)
    env = {"KVSTORE_IMAGE": kvstore_image}
    for i in range(3):
        env[f"KVSTORE_PORT_{i + 1}"] = str(ports[i])
        env[f"KVSTORE_METRICS_PORT_{i + 1}"] = str(ports[3 + i])
    endpoints = [f"127.0.0.1:{p}" for p in ports[:3]]
    dc = [*compose, "-p", project, "-f", "docker-compose.yml"]

    def container(node_id: int) -> str:
        return run([*dc, "ps", "-q", f"node{node_id}"], env=env).stdout.strip()

    try:
        with timed("compose: up until a leader"):
            run([*dc, "up", "-d", "--no-build"], env=env, timeout=300)
            wait_leader(endpoints, timeout=120)
        with Client(endpoints, timeout=5.0) as c:
            data = write_and_read(c, "before", 30)
            leader = wait_for("a leader", lambda: leader_of(c.status()), 60)

            # docker kill: the node is gone at once, no shutdown.
            run(["docker", "kill", container(leader)])
            with timed("compose: writes resume after docker kill of the leader"):
                put_until_ok(c, "after-kill", "x", timeout=60)
            data |= {"after-kill": "x"} | write_and_read(c, "after", 30)
            new_leader = wait_for("a new leader", lambda: leader_of(c.status()), 60)
            assert new_leader != leader

            with timed("compose: killed container restarted and caught up"):
                run([*dc, "start", f"node{leader}"], env=env)
                wait_for(
                    f"node{leader} to catch up",
                    lambda: node_caught_up(endpoints[leader - 1], endpoints[new_leader - 1], data),
                    120,
                )

            # A crash (not a docker kill): the restart policy brings the container back.
            follower = next(i for i in (1, 2, 3) if i != new_leader)
            cid = container(follower)
            pid = int(run(["docker", "inspect", "-f", "{{.State.Pid}}", cid]).stdout)
            restarts = int(run(["docker", "inspect", "-f", "{{.RestartCount}}", cid]).stdout)
            os.kill(pid, signal.SIGKILL)
            data |= write_and_read(c, "during-crash", 10)
            with timed("compose: crashed container restarted by policy and caught up"):
                wait_for(
                    "the restart policy",
                    lambda: (
                        int(run(["docker", "inspect", "-f", "{{.RestartCount}}", cid]).stdout)
                        > restarts
                    ),
                    60,
                    every=0.5,
                )
                wait_for(
                    f"node{follower} to catch up",
                    lambda: node_caught_up(
                        endpoints[follower - 1], endpoints[new_leader - 1], data
                    ),
                    120,
                )
            for k, v in data.items():
                assert c.get(k, read_mode="strong") == v.encode(), k
    except BaseException:
        print(run([*dc, "logs", "--tail", "40"], env=env, check=False).stdout)
        raise
    finally:
        t0 = time.monotonic()
        run([*dc, "down", "-v"], env=env, check=False, timeout=300)
        print(f"compose down -v: {time.monotonic() - t0:.1f} s")
    volumes = run(["docker", "volume", "ls", "-q", "--filter", f"name={project}_"]).stdout
    assert volumes.strip() == "", f"volumes left behind: {volumes}"
