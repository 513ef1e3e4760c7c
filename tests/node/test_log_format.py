"""--log-format json (issue 14): one JSON object per line with node id and fields."""

from __future__ import annotations

import json
import logging

import pytest

from kvstore.node import log


def test_json_lines_carry_node_event_and_fields(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger("kvstore")
    saved = root.handlers[:], root.level, root.propagate
    try:
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
    finally:
        root.handlers[:], root.level, root.propagate = saved
