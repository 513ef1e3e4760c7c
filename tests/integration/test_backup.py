"""Backup under write load and restore into a fresh cluster, with real processes.

A sharded 3-node cluster (2 shards and the meta group) takes writes from two writers
while `kvstore snapshot save` runs; the file is restored into new data directories of a
new cluster (new ports, new cluster id), which then serves: every write acknowledged
before the save started is there, and every key there is one a writer attempted before
the save ended, with the value it wrote (nothing invented). Then the bad inputs: a file
cut in half, flipped bytes, a non-empty data directory, the old cluster id: each a clear
error with its documented exit code, and nothing created.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from kvstore.client import Client

from .harness import LocalCluster, wait_for


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class _Writer(threading.Thread):
    def __init__(self, c: LocalCluster, t: int) -> None:
        super().__init__(daemon=True)
        self.c, self.t = c, t
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: list[bytes] = []
        self.attempted: list[bytes] = []

    def run(self) -> None:
        with self.c.client(timeout=5.0) as cl:
            i = 0
            while not self.stop.is_set():
                # Keys on both sides of the split key "m".
                key = f"{'am'[i % 2]}-{self.t}-{i:06d}".encode()
                with self.lock:
                    self.attempted.append(key)
                try:
                    cl.put(key, b"v" + key)
                except Exception:
                    pass
                else:
                    with self.lock:
                        self.acked.append(key)
                i += 1

    def snapshot(self) -> tuple[set[bytes], set[bytes]]:
        with self.lock:
            return set(self.acked), set(self.attempted)


def _scan_all(cl: Client) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    start = b""
    while True:
        rows = cl.scan(start, b"", 10_000)
        out.update(rows)
        if len(rows) < 10_000:
            return out
        start = rows[-1][0] + b"\x00"


LONG_PREFIX = b"pre-long-" + b"x" * 600
LONG = [LONG_PREFIX + t for t in (b"b", b"a" * 7000, b"c", b"")]
"""Keys of up to 8 KiB (issue 14) go through a backup and restore in full-key order."""


def test_backup_under_load_restores_into_a_new_cluster(tmp_path: Path) -> None:
    src = LocalCluster(tmp_path / "src", extra=["--shards", "2", "--split-keys", "m"])
    (tmp_path / "src").mkdir()
    src.start()
    backup = str(tmp_path / "b.kvs")
    try:
        src.wait_leader()
        with src.client() as cl:
            wait_for(lambda: cl.put(b"z-first", b"1"), 30, "a first write")
            for i in range(300):
                cl.put(f"pre-{i:04d}".encode(), b"vpre-" + str(i).encode())
            for k in LONG:  # past LMDB's key limit, sharing their first 494 bytes
                cl.put(k, k[-4:])
        writers = [_Writer(src, t) for t in range(2)]
        for w in writers:
            w.start()
        wait_for(lambda: all(len(w.snapshot()[0]) > 20 for w in writers), 30, "writes")
        acked_before: set[bytes] = set()
        for w in writers:
            acked_before |= w.snapshot()[0]
        r = _cli("snapshot", "save", backup, "--endpoints", ",".join(src.endpoints))
        attempted: set[bytes] = set()
        for w in writers:
            attempted |= w.snapshot()[1]
        # Writes went on during the save.
        assert r.returncode == 0, r.stderr
        for w in writers:
            w.stop.set()
        for w in writers:
            w.join(30)
        assert len(acked_before) < sum(len(w.snapshot()[0]) for w in writers)
    finally:
        src.close()
    st = _cli("snapshot", "status", backup)
    assert st.returncode == 0 and "checksums OK" in st.stdout, st
    assert {ln.split()[0] for ln in st.stdout.splitlines()[2:]} == {"0", "1", "2"}

    dst = LocalCluster(tmp_path / "dst", extra=["--cluster-id", "restored"])
    peers = ",".join(f"{i}={dst.endpoint(i)}" for i in sorted(dst.ports))
    (tmp_path / "dst").mkdir()
    for i in sorted(dst.ports):
        r = _cli(
            "snapshot", "restore", backup, "--data-dir", str(tmp_path / "dst" / f"node{i}"),
            "--id", str(i), "--peers", peers, "--cluster-id", "restored",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    dst.start()
    try:
        dst.wait_leader()
        with dst.client(timeout=10.0) as cl:
            got = wait_for(lambda: _scan_all(cl), 30, "a scan of the restored cluster")
            expected_pre = {f"pre-{i:04d}".encode(): b"vpre-" + str(i).encode() for i in range(300)}
            for k, v in expected_pre.items():
                assert got.get(k) == v
            assert got.get(b"z-first") == b"1"
            assert [k for k, _ in cl.scan(LONG_PREFIX, LONG_PREFIX + b"\xff")] == sorted(LONG)
            assert all(got.get(k) == k[-4:] for k in LONG)
            missing = sorted(k for k in acked_before if got.get(k) != b"v" + k)
            assert not missing, f"acknowledged before the save, missing: {missing[:5]}"
            written = {k for k in got if k[:2] in (b"a-", b"m-")}
            invented = sorted(written - attempted)
            assert not invented, f"never written before the save ended: {invented[:5]}"
            assert all(got[k] == b"v" + k for k in written)
            # The restored cluster takes writes on both shards.
            cl.put(b"after-a", b"1")
            cl.put(b"zz-after", b"2")
            assert cl.get(b"zz-after") == b"2"
    finally:
        dst.close()


def test_bad_backup_files_and_targets_are_refused(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "src", nodes=1)  # only a valid file is needed
    (tmp_path / "src").mkdir()
    c.start()
    good = str(tmp_path / "b.kvs")
    try:
        c.wait_leader()
        with c.client() as cl:
            wait_for(lambda: cl.put(b"k", b"v"), 30, "a first write")
        r = _cli("snapshot", "save", good, "--endpoints", ",".join(c.endpoints))
        assert r.returncode == 0, r.stderr
    finally:
        c.close()
    data = Path(good).read_bytes()

    def restore(path: str, target: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return _cli("snapshot", "restore", path, "--data-dir", str(target), "--nodes", "3", *extra)

    half = tmp_path / "half.kvs"
    half.write_bytes(data[: len(data) // 2])
    r = restore(str(half), tmp_path / "t1")
    assert r.returncode == 1 and "truncated" in r.stderr, r
    assert not (tmp_path / "t1").exists()

    for at in (20, len(data) // 2, len(data) - 3):
        bad = tmp_path / f"flip{at}.kvs"
        bad.write_bytes(data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :])
        r = restore(str(bad), tmp_path / "t2")
        assert r.returncode == 1 and "corrupt" in r.stderr, (at, r)
        assert not (tmp_path / "t2").exists()
        assert _cli("snapshot", "status", str(bad)).returncode == 1

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    r = restore(good, busy)
    assert r.returncode == 2 and "not empty" in r.stderr, r
    assert os.listdir(busy) == ["keep.txt"] and (busy / "keep.txt").read_text() == "mine"

    r = restore(good, tmp_path / "t3", "--cluster-id", "kvstore")
    assert r.returncode == 2 and "new cluster id" in r.stderr, r
    assert not (tmp_path / "t3").exists()

    r = restore(str(tmp_path / "nope.kvs"), tmp_path / "t4")
    assert r.returncode == 1 and "cannot open" in r.stderr, r
