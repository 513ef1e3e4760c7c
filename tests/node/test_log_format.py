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
