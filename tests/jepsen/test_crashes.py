"""A node whose driver crashed is reported even when its process lives on (no root needed)."""

from __future__ import annotations

from pathlib import Path

from kvstore.jepsen.hosts import Host
from kvstore.jepsen.runner import crashes


def test_critical_log_lines_become_anomalies(tmp_path: Path) -> None:
    (tmp_path / "n1.log").write_text("ts=1 level=INFO node=1 event=started\n")
    (tmp_path / "n2.log").write_text(
        "ts=1 level=INFO node=2 event=started\n"
        "ts=2 level=CRITICAL node=2 event=driver_crashed "
        'error="DiskError(\'mdb_txn_commit: No space left on device\')" traceback="..."\n'
        "ts=3 level=CRITICAL node=2 event=again\n"
    )
    found = crashes(tmp_path, [Host(index=i) for i in (1, 2, 3)])
    assert len(found) == 1
    assert found[0].startswith("node n2 crashed:") and "No space left" in found[0]
    assert "traceback" not in found[0]
