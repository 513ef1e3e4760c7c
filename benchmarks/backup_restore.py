"""Backup and restore times: load N keys into a local 3-node cluster, time
`kvstore snapshot save`, `kvstore snapshot restore --nodes 3` and the restored cluster's
start until a strong read of the last key answers; checks the restored key count.

    nice -n 10 .venv/bin/python benchmarks/backup_restore.py --keys 100000 [--value-size 256]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from kvstore.client import AsyncClient, Client


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli", *args], capture_output=True, text=True, check=True
    )


def start(root: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "kvstore.cli", "cluster", "--nodes", "3", "--port", str(port),
         "--data-dir", root, "--map-size-mb", "4096", "--snapshot-entries", "100000", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def stop(p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGINT)
    p.wait(60)


def wait_ready(endpoints: list[str], key: bytes, timeout: float = 120) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with Client(endpoints, timeout=3) as c:
                if c.get(key) is not None:
                    return time.monotonic() - t0
        except Exception:
            pass
        time.sleep(0.2)
    raise TimeoutError("restored cluster did not serve")


async def load(endpoints: list[str], n: int, size: int, conc: int) -> None:
    value = b"x" * size
    async with AsyncClient(endpoints, timeout=60) as c:
        nxt = 0
        t0 = time.monotonic()

        async def worker() -> None:
            nonlocal nxt
            while nxt < n:
                i = nxt
                nxt += 1
                for _ in range(5):  # a put is idempotent here: retry what timed out
                    try:
                        await c.put(b"key%09d" % i, value)
                        break
                    except Exception as e:
                        print(f"  retrying key {i}: {e}", file=sys.stderr)
                if i % 50_000 == 0:
                    print(f"  loaded {i} in {time.monotonic() - t0:.0f} s", file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(conc)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--value-size", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=512)
    ap.add_argument("--port", type=int, default=27601)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kvbackup-")
    src, dst, f = os.path.join(work, "src"), os.path.join(work, "dst"), os.path.join(work, "b.kvs")
    eps = [f"127.0.0.1:{a.port + i}" for i in range(3)]
    p = start(src, a.port)
    try:
        time.sleep(3)
        t = time.monotonic()
        asyncio.run(load(eps, a.keys, a.value_size, a.concurrency))
        t_load = time.monotonic() - t
        t = time.monotonic()
        out = cli("snapshot", "save", f, "--endpoints", ",".join(eps), "--timeout", "30")
        t_save = time.monotonic() - t
        print(out.stdout.strip())
    finally:
        stop(p)
    t = time.monotonic()
    cli("snapshot", "restore", f, "--data-dir", dst, "--nodes", "3", "--port", str(a.port + 100),
        "--map-size-mb", "4096")  # fmt: skip
    t_restore = time.monotonic() - t
    eps2 = [f"127.0.0.1:{a.port + 100 + i}" for i in range(3)]
    p = start(dst, a.port + 100, "--cluster-id", "kvstore-restored")
    try:
        t_ready = wait_ready(eps2, b"key%09d" % (a.keys - 1))
        with Client(eps2, timeout=30) as c:
            count, start_key = 0, b""
            while True:
                rows = c.scan(start_key, b"", 10_000)
                count += len(rows)
                if len(rows) < 10_000:
                    break
                start_key = rows[-1][0] + b"\x00"
    finally:
        stop(p)
    size = os.path.getsize(f)
    print(
        f"keys={a.keys} value={a.value_size}B file={size / 1e6:.1f}MB load={t_load:.1f}s "
        f"save={t_save:.1f}s restore(3 nodes)={t_restore:.1f}s "
        f"restored cluster serving after {t_ready:.1f}s; restored keys={count}"
    )
    assert count == a.keys, count
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
