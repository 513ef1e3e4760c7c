"""Structured logs: one line per event, as ``key=value`` text or (``--log-format json``)
one JSON object per line for log shippers.

Rule: every line a node writes carries the node id (set once by ``setup``), whoever
wrote it: kvstore's own events, library loggers (grpc, asyncio), warnings and uncaught
exceptions all go through the root handler with the same formatter, and a traceback stays
on its record's line (escaped), never lines of its own. Events about one consensus group
carry ``group=`` (on a sharded cluster, the shard's group id). Text that bypasses Python's
logging (gRPC's C core writes to file descriptor 2) is wrapped by ``log_relay``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import types
from typing import TextIO

_LOG = logging.getLogger("kvstore")


def _fmt(value: object) -> str:
    s = str(value)
    if not s or any(c in s for c in ' "=\\\n\r\t'):
        escaped = s.replace("\\", "\\\\").replace('"', '\\"')
        escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
        return '"' + escaped + '"'
    return s


def event(name: str, level: int = logging.INFO, **fields: object) -> None:
    if not _LOG.isEnabledFor(level):
        return
    parts = [f"event={name}"] + [f"{k}={_fmt(v)}" for k, v in fields.items()]
    _LOG.log(level, " ".join(parts), extra={"kv_event": name, "kv_fields": fields})


def _foreign_fields(record: logging.LogRecord) -> dict[str, object]:
    """A record that event() did not make: its logger, its source if it names one
    (the relay's gRPC lines do), and the message as is."""
    out: dict[str, object] = {}
    if record.name != "kvstore":
        out["logger"] = record.name
    src = getattr(record, "kv_src", None)
    if src:
        out["src"] = src
    out["msg"] = record.getMessage()
    return out


class _TextFormatter(logging.Formatter):
    def __init__(self, node_id: int | None) -> None:
        super().__init__()
        self.prefix = "" if node_id is None else f"node={node_id} "

    def format(self, record: logging.LogRecord) -> str:
        head = f"ts={self.formatTime(record)} level={record.levelname} {self.prefix}"
        if getattr(record, "kv_event", None) is not None:
            body = record.getMessage()
        else:
            body = " ".join(f"{k}={_fmt(v)}" for k, v in _foreign_fields(record).items())
        if record.exc_info:
            body += " exc=" + _fmt(self.formatException(record.exc_info))
        return head + body


class _JSONFormatter(logging.Formatter):
    def __init__(self, node_id: int | None) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
        }
        if self.node_id is not None:
            out["node"] = self.node_id
        name = getattr(record, "kv_event", None)
        if name is None:
            out.update(_foreign_fields(record))
        else:
            out["event"] = name
            for k, v in getattr(record, "kv_fields", {}).items():
                out.setdefault(k, v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def formatter(node_id: int | None, fmt: str) -> logging.Formatter:
    return _JSONFormatter(node_id) if fmt == "json" else _TextFormatter(node_id)


def _log_uncaught(
    kind: type[BaseException], exc: BaseException, tb: types.TracebackType | None
) -> None:
    # the main thread's uncaught exception ends the process: a crash (CRITICAL, which the
    # Jepsen harness looks for), with its traceback on the line
    logging.getLogger("kvstore").critical("uncaught exception", exc_info=(kind, exc, tb))


def _thread_hook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    exc = args.exc_value if args.exc_value is not None else args.exc_type()
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("kvstore").error(
        f"uncaught exception in thread {name}",
        exc_info=(args.exc_type, exc, args.exc_traceback),
    )


def setup(
    level: str = "INFO",
    node_id: int | None = None,
    fmt: str = "text",
    stream: TextIO | None = None,
) -> None:
    """Log to ``stream`` (stderr) as ``ts=... level=... node=... event=... k=v`` (or
    JSON objects): kvstore's events, every library logger, warnings and uncaught
    exceptions, through one handler on the root logger."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(node_id, fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    own = logging.getLogger("kvstore")
    own.handlers[:] = []
    own.setLevel(level.upper())
    own.propagate = True
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger
    sys.excepthook = _log_uncaught
    threading.excepthook = _thread_hook
