"""--log-format json (issue 14): one JSON object per line with node id and fields."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import warnings
from collections.abc import Iterator

import pytest

from kvstore.node import log, log_relay


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """setup() configures the whole process; give pytest's back afterwards."""
    root, own = logging.getLogger(), logging.getLogger("kvstore")
    saved = (root.handlers[:], root.level, own.handlers[:], own.level, own.propagate)
    hooks = sys.excepthook, threading.excepthook
    try:
        yield
    finally:
        root.handlers[:], root.level, own.handlers[:], own.level, own.propagate = saved
        sys.excepthook, threading.excepthook = hooks
        logging.captureWarnings(False)


def test_json_lines_carry_node_event_and_fields(capsys: pytest.CaptureFixture[str]) -> None:
    log.setup("INFO", 7, "json")
    log.event("role_changed", group=3, role="leader", note='a "quoted" = value')
    logging.getLogger("kvstore").warning("plain message")
    lines = capsys.readouterr().err.splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["node"] == 7 and first["event"] == "role_changed"
    assert (first["group"], first["role"], first["level"]) == (3, "leader", "INFO")
    assert first["note"] == 'a "quoted" = value'
    assert second["msg"] == "plain message" and second["node"] == 7
    log.setup("INFO", 7)
    log.event("role_changed", group=3)
    assert "node=7 event=role_changed group=3" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_library_loggers_warnings_and_uncaught_exceptions_carry_the_node_id(fmt: str) -> None:
    out = io.StringIO()
    log.setup("INFO", 4, fmt, out)
    logging.getLogger("asyncio").error("Task exception was never retrieved")
    logging.getLogger("grpc._cython.cygrpc").warning('odd "thing"\nsecond line')
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
    t = threading.Thread(target=lambda: 1 / 0, name="worker")
    t.start()
    t.join()
    lines = out.getvalue().splitlines()
    assert len(lines) == 5, lines  # tracebacks and embedded newlines stay on their line
    if fmt == "json":
        recs = [json.loads(line) for line in lines]
        assert all(r["node"] == 4 for r in recs)
        assert [r.get("logger") for r in recs[:3]] == [
            "asyncio",
            "grpc._cython.cygrpc",
            "py.warnings",
        ]
        assert recs[1]["msg"] == 'odd "thing"\nsecond line'
        assert "RuntimeError: boom" in recs[3]["exc"] and recs[3]["level"] == "CRITICAL"
        assert "thread worker" in recs[4]["msg"] and "ZeroDivisionError" in recs[4]["exc"]
    else:
        assert all(" node=4 " in line for line in lines), lines
        assert 'logger=grpc._cython.cygrpc msg="odd \\"thing\\"\\nsecond line"' in lines[1]
        assert "logger=py.warnings" in lines[2] and "old API" in lines[2]
        assert "exc=" in lines[3] and "RuntimeError: boom" in lines[3]


def test_the_relay_turns_raw_stderr_into_log_lines() -> None:
    raw = (
        b"E0000 00:00:1733245377.123456    4242 ssl_transport_security.cc:1659] "
        b"Handshake failed with error SSL_ERROR_SSL\n"
        b"\n"
        b"kvstore serve: cannot open data dir\n"
        b"Fatal Python error: Aborted\xff\n"
    )
    out = io.StringIO()
    log_relay.relay(io.BufferedReader(io.BytesIO(raw)), out, 2, "json")
    recs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["logger"], r["level"], r["node"]) for r in recs] == [
        ("grpc", "ERROR", 2),
        ("stderr", "ERROR", 2),
        ("stderr", "ERROR", 2),
    ]
    assert recs[0]["src"] == "ssl_transport_security.cc:1659"
    assert recs[0]["msg"].startswith("Handshake failed")
    assert recs[2]["msg"] == "Fatal Python error: Aborted\ufffd"


def test_events_about_one_shard_name_it_group() -> None:
    """Log shippers filter one shard's lines by ``group=`` (its group id): no event may
    name it otherwise (``shard=`` was used by splits and moves)."""
    import ast
    from pathlib import Path

    import kvstore

    root = Path(kvstore.__file__).parent
    bad = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "event"
                and any(k.arg in ("shard", "shard_id", "group_id") for k in node.keywords)
            ):
                bad.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not bad, f"events naming a shard other than group=: {bad}"


def test_without_a_stderr_or_a_relay_the_node_logs_as_before() -> None:
    """No fd 2 (started with 2>&-) or no relay process: capture_stderr gives up and leaves
    fd 2 alone instead of failing the node's start."""
    import os
    import subprocess

    code = (
        "import os, sys\n"
        "from kvstore.node import log_relay\n"
        "if sys.argv[1] == 'no-relay': sys.executable = '/nonexistent/python'\n"
        "before = os.fstat(2).st_ino if sys.argv[1] == 'no-relay' else None\n"
        "s = log_relay.capture_stderr(1, 'json')\n"
        "after = os.fstat(2).st_ino if sys.argv[1] == 'no-relay' else None\n"
        "print(s is None, before == after)\n"
    )
    closed = subprocess.run(
        [sys.executable, "-c", code, "no-stderr"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.close(2),
    )
    assert closed.stdout.split() == ["True", "True"], closed
    no_relay = subprocess.run(
        [sys.executable, "-c", code, "no-relay"], capture_output=True, text=True, timeout=60
    )
    assert no_relay.stdout.split() == ["True", "True"], no_relay


def test_a_node_that_is_pid_1_keeps_its_last_words() -> None:
    """In a container the node is PID 1 (the Dockerfile's entrypoint): when it dies the
    kernel kills its relay at once, so with a relay the fatal message it wrote last was
    lost; such a node writes fd 2 itself."""
    import shutil
    import subprocess

    unshare = shutil.which("unshare")
    code = (
        "import os\n"
        "from kvstore.node import log, log_relay\n"
        "log.setup('INFO', 7, 'text', log_relay.capture_stderr(7, 'text'))\n"
        "os.write(2, b'Fatal Python error: the last words\\n')\n"
        "os.abort()\n"
    )
    argv = [unshare or "unshare", "--fork", "--pid", "--mount-proc", sys.executable, "-c", code]
    if unshare is None or subprocess.run([*argv[:4], "true"], capture_output=True).returncode:
        pytest.skip("needs unshare --pid (root)")
    died = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert died.returncode != 0
    assert "the last words" in died.stderr, died
