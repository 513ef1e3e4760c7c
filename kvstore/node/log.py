"""Structured logs: one line per event on the ``kvstore`` logger, as ``key=value`` text
or (``--log-format json``) one JSON object per line for log shippers.

Rule: every line carries the node id (set once by ``setup``); events about one consensus
group carry ``group=`` (on a sharded cluster, the shard's group id).
"""

from __future__ import annotations

import json
import logging
import sys

_LOG = logging.getLogger("kvstore")


def _fmt(value: object) -> str:
    s = str(value)
    if not s or any(c in s for c in ' "='):
        return '"' + s.replace('"', '\\"') + '"'
    return s


def event(name: str, level: int = logging.INFO, **fields: object) -> None:
    if not _LOG.isEnabledFor(level):
        return
    parts = [f"event={name}"] + [f"{k}={_fmt(v)}" for k, v in fields.items()]
    _LOG.log(level, " ".join(parts), extra={"kv_event": name, "kv_fields": fields})


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
        if name is None:  # not from event(): the message as is
            out["msg"] = record.getMessage()
        else:
            out["event"] = name
            for k, v in getattr(record, "kv_fields", {}).items():
                out.setdefault(k, v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str = "INFO", node_id: int | None = None, fmt: str = "text") -> None:
    """Log to stderr as ``ts=... level=... node=... event=... k=v`` (or JSON objects)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JSONFormatter(node_id))
    else:
        prefix = "" if node_id is None else f"node={node_id} "
        handler.setFormatter(
            logging.Formatter(f"ts=%(asctime)s level=%(levelname)s {prefix}%(message)s")
        )
    root = logging.getLogger("kvstore")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
