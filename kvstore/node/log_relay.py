"""The stderr relay: text written to file descriptor 2 without Python's logging (gRPC's
C core logs handshake failures and GOAWAYs there; a fatal error's last words too) comes
out as log lines in the node's format, with the node id.

Rule: the relay is a separate process reading a pipe that replaces the node's fd 2, so
it outlives a node that aborts and still writes what the node said last; it ends when
the node's end of the pipe closes (the node exited, however). The node's own handler
writes to the original stderr directly, never through the relay.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import re
import signal
import subprocess
import sys
from typing import TextIO

from kvstore.node import log

# gRPC's C core (absl): "E0000 00:00:1733245377.123456   4242 file.cc:123] text"
_ABSL = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([^\]\s]+)\] ?(.*)$")
_ABSL_LEVEL = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}


def record_of(line: str) -> logging.LogRecord:
    """One line of raw stderr as a log record: gRPC core lines keep their level and
    source file; anything else (a print, a fatal error) is an ERROR from "stderr"."""
    m = _ABSL.match(line)
    if m:
        rec = logging.LogRecord("grpc", _ABSL_LEVEL[m[1]], "", 0, m[3], None, None)
        rec.kv_src = m[2]
    else:
        rec = logging.LogRecord("stderr", logging.ERROR, "", 0, line, None, None)
    return rec


def relay(src: io.BufferedReader, out: TextIO, node_id: int | None, fmt: str) -> None:
    formatter = log.formatter(node_id, fmt)
    for raw in src:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.strip():
            out.write(formatter.format(record_of(line)) + "\n")
            out.flush()


def capture_stderr(node_id: int | None, fmt: str) -> TextIO | None:
    """Replace fd 2 with a pipe to a relay process; returns a stream on the original
    stderr for the node's own handler (None, and fd 2 untouched, when there is no stderr,
    no relay could start, or the node is PID 1: the node then logs as before). At
    exit the pipe is closed and the relay waited for, so whoever waits for the node finds
    every line written."""
    if os.getpid() == 1:
        # A container's entrypoint (the Dockerfile's): when PID 1 dies the kernel kills
        # every other process of its namespace at once, the relay with the node's last
        # words still in its pipe; the crash message, the relay's reason to be, was lost.
        return None
    try:
        out_fd = os.dup(2)
    except OSError:
        return None
    r, w = os.pipe()
    try:
        relay_proc = subprocess.Popen(
            [sys.executable, "-m", "kvstore.node.log_relay", str(node_id or 0), fmt],
            stdin=r,
            stdout=out_fd,
            stderr=out_fd,
            cwd="/",  # never keep a data directory (or its mount) busy
        )
    except OSError:
        for fd in (r, w, out_fd):
            os.close(fd)
        return None
    os.close(r)
    sys.stderr.flush()
    os.dup2(w, 2)
    os.close(w)

    def drain() -> None:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)  # closes the pipe; fd 2 stays taken, so nothing else lands on it
        os.close(null)
        with contextlib.suppress(subprocess.TimeoutExpired):
            relay_proc.wait(timeout=5)

    atexit.register(drain)
    return open(out_fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace")


def main(argv: list[str]) -> int:
    # The node decides when logging ends: a Ctrl-C or SIGTERM sent to its process group
    # must not cut its last lines off; end of input ends the relay.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    node_id = int(argv[0]) or None
    relay(sys.stdin.buffer, sys.stdout, node_id, argv[1])  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
