"""The ``disk`` nemesis' hands: a small disk per node, filled up; damaged data files.

- Each node's data directory is a tmpfs of ``size_mb`` (mounted before the node first
  starts, unmounted when the cluster stops), so that "the disk is full" is real: ``fill``
  takes every free byte with a filler file, ``free`` removes it.
- ``damage`` works on a stopped node: it flips one byte at a random offset of the largest
  data file, or cuts a random part of its tail. The node is then started again and must
  refuse the damaged data and say so (the harness records what it did); healing wipes the
  node and adds it back through the membership API (:mod:`kvstore.jepsen.members`).

Invariant: :func:`unmount` is called for every directory :func:`mount` mounted (the
cluster's stop does it on every exit path).
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from pathlib import Path

from kvstore.jepsen.hosts import DISK_SOURCE, HarnessError

FILLER = "jepsen-disk-filler"


def mount(path: Path, size_mb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(path):
        return
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", DISK_SOURCE, str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise HarnessError(f"cannot mount a {size_mb} MB tmpfs on {path}: {done.stderr.strip()}")


def unmount(path: Path) -> None:
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> str:
    """Takes every free byte of the file system holding ``path``."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    fd = os.open(path / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for block in (1 << 20, 1 << 12, 1):  # big writes, then the last pages, then bytes
            chunk = b"\0" * block
            with contextlib.suppress(OSError):  # ENOSPC: on to smaller writes
                while True:
                    os.write(fd, chunk)
    finally:
        os.close(fd)
    st = os.statvfs(path)
    left = st.f_bavail * st.f_frsize
    return f"filled {free >> 20} MB, {left >> 10} KB left"


def free(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (path / FILLER).unlink()


def damage(path: Path, rng: random.Random) -> str:
    """Flips a byte in, or truncates the tail of, the largest file under ``path``."""
    files = [p for p in path.rglob("*") if p.is_file() and p.name != FILLER]
    files = [p for p in files if p.stat().st_size > 0]
    if not files:
        return "no data file to damage"
    target = max(files, key=lambda p: p.stat().st_size)
    size = target.stat().st_size
    if rng.random() < 0.5:
        offset = rng.randrange(size)
        with open(target, "r+b") as fh:
            fh.seek(offset)
            byte = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([byte[0] ^ (1 << rng.randrange(8))]))
        return f"flipped a bit at byte {offset} of {target.name} ({size} bytes)"
    keep = int(size * rng.uniform(0.5, 0.98))
    os.truncate(target, keep)
    return f"truncated {target.name} from {size} to {keep} bytes"
