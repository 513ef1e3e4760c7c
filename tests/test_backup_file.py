"""The backup file format (kvstore/backup/fileformat.py): a whole file reads back with its
sections; every truncation and every flipped byte is refused with BackupError; a section
cut short by a broken stream is rolled back without a trace."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from kvstore.backup.fileformat import (
    BackupError,
    BackupWriter,
    Section,
    read_backup,
    section_chunks,
)


def _section(group: int, data: bytes) -> Section:
    return Section(
        group=group, index=7, term=2, voters=(1, 2, 3), learners=(), read_index=6,
        size=len(data), crc32=zlib.crc32(data), shard=b"",
    )  # fmt: skip


def _write(path: Path) -> dict[int, bytes]:
    images = {1: b"first image " * 40, 2: bytes(range(256)) * 3}
    w = BackupWriter(str(path))
    w.write_header({"cluster_id": "c", "consensus": "raft", "sharded": False})
    for g, data in images.items():
        w.begin_section()
        if g == 2:  # a stream that broke half way, then the retry
            w.data(data[:100])
            w.rollback_section()
            w.begin_section()
        for i in range(0, len(data), 300):
            w.data(data[i : i + 300])
        w.end_section(_section(g, data))
    w.commit()
    return images


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "b.kvs"
    images = _write(path)
    assert not (tmp_path / "b.kvs.tmp").exists()
    b = read_backup(str(path))
    assert (b.cluster_id, b.consensus, b.sharded) == ("c", "raft", False)
    assert [s.group for s in b.sections] == [1, 2]
    for s in b.sections:
        assert b"".join(section_chunks(str(path), s)) == images[s.group]


def test_every_truncation_and_flipped_byte_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.kvs"
    _write(path)
    data = path.read_bytes()
    bad = tmp_path / "bad.kvs"
    edges = {*range(40), *range(len(data) - 40, len(data))}
    for n in sorted(edges | set(range(0, len(data), 5))):
        bad.write_bytes(data[:n])
        with pytest.raises(BackupError):
            read_backup(str(bad))
    for at in range(0, len(data), 11):
        bad.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :])
        with pytest.raises(BackupError):
            read_backup(str(bad))


def test_a_section_that_does_not_match_what_the_node_sent_is_refused(tmp_path: Path) -> None:
    w = BackupWriter(str(tmp_path / "b.kvs"))
    w.write_header({"cluster_id": "c", "consensus": "raft", "sharded": False})
    w.begin_section()
    w.data(b"abc")
    with pytest.raises(BackupError, match="received 3 bytes"):
        w.end_section(_section(1, b"abcd"))
    w.abort()
    assert list(tmp_path.iterdir()) == []
