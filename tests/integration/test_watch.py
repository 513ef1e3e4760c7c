"""History and watch on real processes (docs/watch.md), on both cores: gets at past
revisions, compaction and its error, `kvstore get --rev`, `kvstore compact`, `kvstore
watch`, and a watch that loses its node (the leader, kill -9) mid-stream while writes go
on, resuming elsewhere with no gap and no duplicate."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.client import Compacted, KVError, WatchEvent, WatchProgress

from .harness import LocalCluster, wait_for


@pytest.fixture
def cluster(tmp_path: Path, consensus: str) -> Iterator[LocalCluster]:
    """The conftest's cluster with a longer wait for the first leader (three Python
    processes starting on a loaded 2-core machine)."""
    c = LocalCluster(tmp_path, consensus=consensus)
    try:
        c.start()
        c.wait_leader(timeout=120)
        yield c
    finally:
        c.close()


def _cli(
    cluster: LocalCluster, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli", *args, "--endpoints", ",".join(cluster.endpoints)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_history_compaction_and_watch_through_a_leader_kill(cluster: LocalCluster) -> None:
    with cluster.client(timeout=20) as c:
        # Bad input: refused with the limit named, nothing started.
        with pytest.raises(KVError, match="range_end"):
            c.watch("b", range_end="a")
        with pytest.raises(KVError, match="start_revision"):
            c.watch("a", start_revision=-1)
        with c.watch("k" * 9000) as w, pytest.raises(KVError, match="key"):
            w.next(timeout=20)
        revs = [c.put("h", f"v{i}") for i in range(5)]
        assert revs == sorted(revs)
        for i, r in enumerate(revs):
            assert c.get("h", revision=r) == f"v{i}".encode()
        if revs[0] > 1:  # revision 0 means the latest (the first Paxos write is at 1)
            assert c.get("h", revision=revs[0] - 1) is None  # before it existed
        c.delete("h")
        assert c.get("h") is None and c.get("h", revision=revs[-1]) == b"v4"
        out = _cli(cluster, "get", "h", "--rev", str(revs[2]))
        assert out.returncode == 0 and out.stdout == "v2\n", out

        # A watch from a past revision replays the history, then follows.
        with c.watch("h", start_revision=revs[0]) as w:
            got = [w.next(timeout=20) for _ in range(6)]
        assert [(e.type, e.value) for e in got if isinstance(e, WatchEvent)] == [
            *[("put", f"v{i}".encode()) for i in range(5)],
            ("delete", b""),
        ]

        # Compaction: through the log, then the error names the oldest revision.
        compacted = c.compact(revs[2])
        assert list(compacted.values()) == [revs[2]]
        # Every replica applies it (a lagging one still serves what it holds).
        wait_for(
            lambda: all(
                n["groups"][0]["applied"] >= revs[-1] + 2
                for n in cluster.status()
                if n["reachable"]
            ),
            30,
            "the compaction applied everywhere",
        )
        with pytest.raises(Compacted) as exc:
            c.get("h", revision=revs[1])
        assert exc.value.oldest == revs[2] + 1 and f"{revs[2] + 1}" in exc.value.message
        assert c.get("h", revision=revs[3]) == b"v3"
        with c.watch("h", start_revision=revs[1]) as w, pytest.raises(Compacted) as exc:
            w.next(timeout=20)
        assert exc.value.oldest == revs[2] + 1
        out = _cli(cluster, "get", "h", "--rev", str(revs[1]))
        assert out.returncode == 3 and "oldest available revision" in out.stderr, out
        out = _cli(cluster, "compact", str(revs[3]))
        assert out.returncode == 0 and f"revision {revs[3]}" in out.stdout, out

        # The CLI watch prints a line per event.
        cli_watch = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kvstore.cli",
                "watch",
                "w/",
                "--prefix",
                "--count",
                "2",
                "--endpoints",
                ",".join(cluster.endpoints),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )

        # A watcher on the leader (the client learned it from the writes above) while a
        # writer runs; the leader is killed in the middle.
        start = c.put("w/start", "0")
        w = c.watch("w/", prefix=True, start_revision=start, progress_notify=True)
        acked: list[tuple[bytes, int]] = []
        stop = threading.Event()

        def writer() -> None:
            with cluster.client(timeout=20) as wc:
                i = 0
                while not stop.is_set():
                    key = f"w/{i % 5}"
                    with contextlib.suppress(KVError):  # may have applied: not counted
                        acked.append((f"{key}={i}".encode(), wc.put(key, f"{key}={i}")))
                    i += 1

        t = threading.Thread(target=writer)
        t.start()
        events: list[WatchEvent] = []
        progress: list[WatchProgress] = []

        def take(until: float) -> None:
            while time.monotonic() < until:
                item = w.next(timeout=1)
                if isinstance(item, WatchEvent):
                    events.append(item)
                elif isinstance(item, WatchProgress):
                    progress.append(item)

        try:
            wait_for(lambda: len(acked) >= 20, 60, "writes before the kill")
            take(time.monotonic() + 0.5)
            leader = cluster.leader()
            assert leader is not None
            cluster.kill(leader)
            wait_for(lambda: len(acked) >= 80, 90, "writes after the kill")
        finally:
            stop.set()
            t.join()
        last = max(r for _, r in acked)
        wait_for(
            lambda: (take(time.monotonic() + 0.5), events and events[-1].revision >= last)[1],
            60,
            "every acknowledged write watched",
        )

        # Idle now: a progress notification says how far the watcher is current.
        def current() -> bool:
            take(time.monotonic() + 0.5)
            return bool(progress) and progress[-1].revision >= events[-1].revision

        wait_for(current, 30, "a progress notification past the last event")
        w.close()
        revisions = [e.revision for e in events]
        assert revisions == sorted(revisions), "out of revision order"
        assert len({(e.revision, e.key) for e in events}) == len(events), "duplicates"
        assert events[0].revision == start
        watched = {(e.value, e.revision) for e in events}
        missing = [a for a in acked if a not in watched]
        assert not missing, f"acknowledged writes never watched: {missing[:5]}"
        # No gap: replaying the events gives the store's state at sampled revisions.
        keys = [f"w/{i}".encode() for i in range(5)]
        state: dict[bytes, bytes] = {}
        by_rev: dict[int, list[WatchEvent]] = {}
        for e in events:
            by_rev.setdefault(e.revision, []).append(e)
        samples = set(range(start, last + 1, max(1, (last - start) // 8))) | {last}
        for r in range(start, last + 1):
            for e in by_rev.get(r, []):
                state[e.key] = e.value
            if r in samples:
                for k in keys:
                    assert c.get(k, revision=r) == state.get(k), (r, k)
        cluster.start(leader)
        cli_out, _ = cli_watch.communicate(timeout=60)
        lines = cli_out.splitlines()
        assert len(lines) == 2 and all("\tPUT\tw/" in ln for ln in lines), lines
