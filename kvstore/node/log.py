"""Structured logs: one ``key=value`` line per event on the ``kvstore`` logger."""

from __future__ import annotations

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
    _LOG.log(level, " ".join(parts))


def setup(level: str = "INFO", node_id: int | None = None) -> None:
    """Log to stderr as ``ts=... level=... node=... event=... k=v``."""
    prefix = "" if node_id is None else f"node={node_id} "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"ts=%(asctime)s level=%(levelname)s {prefix}%(message)s")
    )
    root = logging.getLogger("kvstore")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
