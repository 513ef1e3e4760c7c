"""The backup file (kvstore snapshot save): a header, one section per group, a checksum.

Rule: a backup file is either whole and verified or refused. It is written to a temporary
file next to its destination and renamed into place after an fsync, so a crash leaves
either the old file or the new one; a reader checks every length, each section's CRC32
and size, and the SHA-256 over the whole file before anything is restored from it.

    "KVSBAK\\n" | u32 format version | u32 len, header JSON
    per group:  "S" | data frames | u32 0 | u32 len, section JSON
    end:        "E" | SHA-256 of every byte before it (32 bytes)
    frame:      u32 len (1..MAX_FRAME) | bytes of the group's snapshot image

The header names the format version, source cluster id, consensus and sharding; each
section the group, its image's index and term, its members, the ReadIndex it was taken
at, and the image's size and CRC32 (the image has its own CRC too: storage/snapshot.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

MAGIC = b"KVSBAK\n"
FORMAT_VERSION = 1
MAX_FRAME = 64 << 20
MAX_JSON = 1 << 20
_U32 = struct.Struct("<I")


class BackupError(Exception):
    """The backup file is missing, truncated, corrupt or of an unknown format."""


@dataclass(frozen=True, slots=True)
class Section:
    group: int
    index: int
    term: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    read_index: int
    size: int
    crc32: int
    shard: bytes
    """The group's encoded shard descriptor (b"": none)."""
    offset: int = 0
    """Where the section's first frame starts in the file (set by the reader)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "index": self.index,
            "term": self.term,
            "voters": list(self.voters),
            "learners": list(self.learners),
            "read_index": self.read_index,
            "size": self.size,
            "crc32": self.crc32,
            "shard": self.shard.hex(),
        }

    @staticmethod
    def from_json(d: dict[str, Any], offset: int) -> Section:
        return Section(
            group=int(d["group"]),
            index=int(d["index"]),
            term=int(d["term"]),
            voters=tuple(int(x) for x in d["voters"]),
            learners=tuple(int(x) for x in d["learners"]),
            read_index=int(d["read_index"]),
            size=int(d["size"]),
            crc32=int(d["crc32"]),
            shard=bytes.fromhex(d["shard"]),
            offset=offset,
        )


@dataclass(frozen=True, slots=True)
class Backup:
    path: str
    header: dict[str, Any]
    sections: list[Section] = field(default_factory=list)

    @property
    def cluster_id(self) -> str:
        return str(self.header["cluster_id"])

    @property
    def consensus(self) -> str:
        return str(self.header["consensus"])

    @property
    def sharded(self) -> bool:
        return bool(self.header["sharded"])

    @property
    def meta_voters(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.header.get("meta_voters", ()))


class BackupWriter:
    """Writes a backup file to ``path + ".tmp"``; ``commit()`` renames it into place."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tmp = f"{path}.tmp"
        self._f: BinaryIO = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._sha = hashlib.sha256()
        self.size = 0
        self.header: dict[str, Any] | None = None
        self._crc = 0
        self._section_size = 0
        self._mark: tuple[int, Any] | None = None

    def write_header(self, header: dict[str, Any]) -> None:
        """Once, before the first section."""
        assert self.header is None
        self.header = {"format_version": FORMAT_VERSION, **header}
        body = json.dumps(self.header).encode()
        self._put(MAGIC + _U32.pack(FORMAT_VERSION) + _U32.pack(len(body)) + body)

    def _put(self, b: bytes) -> None:
        self._f.write(b)
        self._sha.update(b)
        self.size += len(b)

    def begin_section(self) -> None:
        self._mark = (self.size, self._sha.copy())
        self._put(b"S")
        self._crc = 0
        self._section_size = 0

    def data(self, b: bytes) -> None:
        if not b:
            return
        self._put(_U32.pack(len(b)) + b)
        self._crc = zlib.crc32(b, self._crc)
        self._section_size += len(b)

    def rollback_section(self) -> None:
        """Forget a section cut short (its stream broke): the file is as before it."""
        if self._mark is None:
            return
        self.size, self._sha = self._mark
        self._mark = None
        self._f.flush()
        self._f.seek(self.size)
        self._f.truncate()

    def end_section(self, s: Section) -> None:
        self._mark = None
        if (s.size, s.crc32) != (self._section_size, self._crc):
            raise BackupError(
                f"group {s.group}: received {self._section_size} bytes with CRC32 "
                f"{self._crc:#x}, the node sent {s.size} bytes with CRC32 {s.crc32:#x}"
            )
        body = json.dumps(s.to_json()).encode()
        self._put(_U32.pack(0) + _U32.pack(len(body)) + body)

    def commit(self) -> None:
        assert self.header is not None
        self._put(b"E")
        self._f.write(self._sha.digest())
        self.size += 32
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.path)
        fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def abort(self) -> None:
        self._f.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


class _Reader:
    def __init__(self, f: BinaryIO, path: str) -> None:
        self.f = f
        self.path = path
        self.pos = 0
        self.sha = hashlib.sha256()

    def take(self, n: int, what: str) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise BackupError(
                f"backup file {self.path} is truncated: it ends at byte {self.pos + len(b)} "
                f"inside the {what}"
            )
        self.pos += n
        self.sha.update(b)
        return b

    def u32(self, what: str) -> int:
        (n,) = _U32.unpack(self.take(4, what))
        return int(n)

    def json(self, what: str) -> dict[str, Any]:
        n = self.u32(what)
        if n > MAX_JSON:
            raise BackupError(f"backup file {self.path} is corrupt: {what} of {n} bytes")
        raw = self.take(n, what)
        try:
            d = json.loads(raw)
        except ValueError as e:
            raise BackupError(f"backup file {self.path} is corrupt: {what}: {e}") from e
        if not isinstance(d, dict):
            raise BackupError(f"backup file {self.path} is corrupt: {what} is not an object")
        return d


def read_backup(path: str) -> Backup:
    """Read and verify the whole file (every frame, CRC and the SHA-256); raises
    BackupError naming what is wrong. Nothing is kept in memory but the metadata."""
    try:
        f = open(path, "rb")  # noqa: SIM115
    except OSError as e:
        raise BackupError(f"cannot open backup file {path}: {e.strerror}") from e
    with f:
        r = _Reader(f, path)
        if r.take(len(MAGIC), "file magic") != MAGIC:
            raise BackupError(f"{path} is not a kvstore backup file (bad magic)")
        version = r.u32("format version")
        if version != FORMAT_VERSION:
            raise BackupError(
                f"backup file {path} has format version {version}; this kvstore reads "
                f"version {FORMAT_VERSION}"
            )
        try:
            header = r.json("header")
            for k in ("cluster_id", "consensus", "sharded"):
                header[k]
        except KeyError as e:
            raise BackupError(f"backup file {path} is corrupt: header lacks {e}") from e
        sections: list[Section] = []
        while True:
            tag = r.take(1, "section tag")
            if tag == b"E":
                digest = r.sha.digest()
                stored = f.read(32)
                if len(stored) != 32:
                    raise BackupError(f"backup file {path} is truncated: the checksum is cut")
                if stored != digest:
                    raise BackupError(f"backup file {path} is corrupt: SHA-256 mismatch")
                if f.read(1):
                    raise BackupError(f"backup file {path} is corrupt: bytes after the end")
                return Backup(path, header, sections)
            if tag != b"S":
                raise BackupError(f"backup file {path} is corrupt: bad tag at byte {r.pos - 1}")
            offset, size, crc = r.pos, 0, 0
            while True:
                n = r.u32("frame length")
                if n == 0:
                    break
                if n > MAX_FRAME:
                    raise BackupError(
                        f"backup file {path} is corrupt: frame of {n} bytes at {r.pos - 4}"
                    )
                while n:
                    b = r.take(min(n, 1 << 20), "section data")
                    crc = zlib.crc32(b, crc)
                    size += len(b)
                    n -= len(b)
            try:
                s = Section.from_json(r.json("section descriptor"), offset)
            except (KeyError, ValueError, TypeError) as e:
                raise BackupError(f"backup file {path} is corrupt: section: {e}") from e
            if (s.size, s.crc32) != (size, crc):
                raise BackupError(
                    f"backup file {path} is corrupt: group {s.group}'s data has "
                    f"{size} bytes with CRC32 {crc:#x}, its descriptor says {s.size} "
                    f"with {s.crc32:#x}"
                )
            sections.append(s)


def section_chunks(path: str, s: Section) -> Iterator[bytes]:
    """The image bytes of section ``s`` (of a file ``read_backup`` verified)."""
    with open(path, "rb") as f:
        f.seek(s.offset)
        while True:
            (n,) = _U32.unpack(f.read(4))
            if n == 0:
                return
            yield f.read(n)
