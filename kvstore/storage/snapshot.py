"""The state machine image of a snapshot: one group's kv and session records, shard
descriptor, meta group state and member addresses at one applied index.

Invariant: an image holds exactly the records of one group at one applied index (for a
shard: the user keys of its range only, a range snapshot) and is written and read as a
stream, one record at a time, so no image is ever whole in memory (a leader builds it to
a file from one read transaction, a follower installs it from the file it received).
Reading gives the records back or raises CorruptionError: the header names the index,
the end frame the record counts, and a CRC32 covers every byte before it; a reader
that stops early has verified nothing. Records are copied as stored, without
re-encoding.

    magic "KVS5" | u64 index | u32 len, shard descriptor (0: none)
                 | u32 len, meta group state (0: none) | u32 len, member addresses
                 | kv frames | END | session frames | END
                 | u64 n_kv | u64 n_sessions | u32 crc
    frame: u32 klen | key | u32 vlen | value          END: u32 0xFFFFFFFF

Session keys are the sessions table's keys without the group prefix (tables.py).
"KVS1"-"KVS4" images (whole, counts first) are still read; KVS1/KVS2 sessions, of the
layout before incarnations, are dropped (see env._upgrade_sessions).

``Snapshot.data`` holds either an image or a reference to a received image file
(``staged_ref``), which only this node's snapshot receiver creates.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from kvstore.storage.errors import CorruptionError

MAGIC = b"KVS5"
_OLD = (b"KVS1", b"KVS2", b"KVS3", b"KVS4")
_HEAD = struct.Struct("<4sQ")
_U32 = struct.Struct("<I")
_U64x2 = struct.Struct("<QQ")
_OLD_SESSION = struct.Struct("<QQI")
_END = 0xFFFFFFFF
_END_BYTES = _U32.pack(_END)
MAX_FIELD = 64 << 20
"""No stored key, value or section comes near this; a larger length is corruption."""
BUFFER = 1 << 20
"""Bytes an image writer gathers, and a reader reads, at a time."""
STAGED = b"KVSF:"
"""``Snapshot.data`` prefix of a reference to an image file (the path follows)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    index: int
    kv: list[tuple[bytes, bytes]]
    """(user key, kv record) in key order."""
    sessions: list[tuple[bytes, bytes]]
    """(session key, record) in key order."""
    shard: bytes = b""
    """The group's encoded shard descriptor at ``index`` (b"": an unsharded group)."""
    meta_state: bytes = b""
    """The meta group's encoded state (b"" for other groups)."""
    members: bytes = b""
    """The group's member address book (codec.encode_members)."""


class Sink(Protocol):
    def write(self, b: bytes, /) -> int: ...


class ImageWriter:
    """Writes an image to ``out``: the small sections now, then ``kv``/``session``
    records (or ``kv_records``/``session_records``) in that order, then ``finish()``.
    Returns sizes and the CRC of the bytes.

    Frames are gathered and written, and checksummed, BUFFER bytes at a time: one
    write and one CRC call per record made building a 1 M-key image cost seconds."""

    def __init__(
        self,
        out: Sink,
        index: int,
        *,
        shard: bytes = b"",
        meta_state: bytes = b"",
        members: bytes = b"",
    ) -> None:
        self._out = out
        self._crc = 0
        self.size = 0
        self._counts = [0, 0]
        self._section = 0
        self._parts: list[bytes] = []
        self._held = 0
        parts = [_HEAD.pack(MAGIC, index)]
        for b in (shard, meta_state, members):
            parts += (_U32.pack(len(b)), b)
        self._put(b"".join(parts))

    def _put(self, b: bytes) -> None:
        self._parts.append(b)
        self._held += len(b)
        if self._held >= BUFFER:
            self._flush()

    def _flush(self) -> None:
        if self._parts:
            b = b"".join(self._parts)
            self._parts, self._held = [], 0
            self._out.write(b)
            self._crc = zlib.crc32(b, self._crc)
            self.size += len(b)

    def kv(self, key: bytes, value: bytes) -> None:
        assert self._section == 0, "kv records come before session records"
        self._frame(key, value)

    def session(self, key: bytes, value: bytes) -> None:
        self._to_sessions()
        self._frame(key, value)

    def kv_records(self, records: Iterable[tuple[bytes, bytes]]) -> None:
        """``kv`` for each record, without a call per record."""
        assert self._section == 0, "kv records come before session records"
        self._frames(records)

    def session_records(self, records: Iterable[tuple[bytes, bytes]]) -> None:
        self._to_sessions()
        self._frames(records)

    def _to_sessions(self) -> None:
        if self._section == 0:
            self._put(_END_BYTES)
            self._section = 1

    def _frame(self, key: bytes, value: bytes) -> None:
        self._put(_U32.pack(len(key)) + key + _U32.pack(len(value)) + value)
        self._counts[self._section] += 1

    def _frames(self, records: Iterable[tuple[bytes, bytes]]) -> None:
        pack = _U32.pack
        parts, held, n = self._parts, self._held, 0
        for key, value in records:
            parts += (pack(len(key)), key, pack(len(value)), value)
            held += 8 + len(key) + len(value)
            n += 1
            if held >= BUFFER:
                self._held = held
                self._flush()
                parts, held = self._parts, 0
        self._held = held
        self._counts[self._section] += n

    def finish(self) -> tuple[int, int]:
        """End the image; returns (size in bytes, CRC32 of all of it)."""
        if self._section == 0:
            self._put(_END_BYTES)
        self._put(_END_BYTES + _U64x2.pack(*self._counts))
        self._flush()
        tail = _U32.pack(self._crc)
        self._out.write(tail)
        self.size += len(tail)
        self._crc = zlib.crc32(tail, self._crc)
        return self.size, self._crc


class ImageReader:
    """Reads an image from ``src``: the small sections at once, then ``kv()`` and
    ``sessions()`` in that order (each to its end), then ``finish()``, which checks the
    counts and the checksum. Raises CorruptionError where the image is not one.

    Reads BUFFER bytes at a time (the header: a few KiB, so reading only it stays
    cheap) and checksums what was consumed once per refill, not once per field."""

    def __init__(self, group: int, index: int, src: BinaryIO) -> None:
        self._src = src
        self._crc = 0
        self._buf = b""
        self._pos = 0
        self._read_size = 4096
        self.group = group
        self.index = index
        self._counts = [0, 0]
        magic, at = _HEAD.unpack(self._take(_HEAD.size))
        if magic != MAGIC or at != index:
            raise self._bad(f"header {magic!r} at index {at}")
        self.shard = self._field()
        self.meta_state = self._field()
        self.members = self._field()

    def _bad(self, what: str) -> CorruptionError:
        return CorruptionError(f"snapshot image: {what}", group=self.group, index=self.index)

    def _need(self, n: int) -> None:
        """At least ``n`` bytes from ``_pos`` in ``_buf``: the consumed bytes go into
        the checksum and the rest moves to the front."""
        avail = len(self._buf) - self._pos
        if avail >= n:
            return
        self._crc = zlib.crc32(memoryview(self._buf)[: self._pos], self._crc)
        more = self._src.read(max(n - avail, self._read_size))
        self._buf = self._buf[self._pos :] + more
        self._pos = 0
        if len(self._buf) < n:
            raise self._bad(f"truncated ({len(self._buf)} of {n} bytes)")

    def _take(self, n: int) -> bytes:
        self._need(n)
        b = self._buf[self._pos : self._pos + n]
        self._pos += n
        return b

    def _len(self) -> int:
        (n,) = _U32.unpack(self._take(4))
        return int(n)

    def _field(self, n: int | None = None) -> bytes:
        n = self._len() if n is None else n
        if n > MAX_FIELD:
            raise self._bad(f"field of {n} bytes")
        return self._take(n)

    def _frames(self, section: int) -> Iterator[tuple[bytes, bytes]]:
        self._read_size = BUFFER
        unpack = _U32.unpack_from
        count = 0
        while True:
            if len(self._buf) - self._pos < 8:
                self._need(4)
            buf, pos = self._buf, self._pos
            (n,) = unpack(buf, pos)
            if n == _END:
                self._pos = pos + 4
                break
            if n > MAX_FIELD:
                raise self._bad(f"field of {n} bytes")
            if len(buf) - pos < n + 8:
                self._need(n + 8)
                buf, pos = self._buf, self._pos
            (m,) = unpack(buf, pos + 4 + n)
            if m > MAX_FIELD:
                raise self._bad(f"field of {m} bytes")
            end = pos + 8 + n + m
            if len(buf) < end:
                self._need(n + 8 + m)
                buf, pos = self._buf, self._pos
                end = pos + 8 + n + m
            self._pos = end
            count += 1
            yield buf[pos + 4 : pos + 4 + n], buf[pos + 8 + n : end]
        self._counts[section] += count

    def kv(self) -> Iterator[tuple[bytes, bytes]]:
        return self._frames(0)

    def sessions(self) -> Iterator[tuple[bytes, bytes]]:
        return self._frames(1)

    def finish(self) -> None:
        counts = list(_U64x2.unpack(self._take(_U64x2.size)))
        crc = zlib.crc32(memoryview(self._buf)[: self._pos], self._crc)
        tail = self._buf[self._pos :]
        if len(tail) < 5:
            tail += self._src.read(5 - len(tail))
        if len(tail) != 4:
            raise self._bad("no checksum" if len(tail) < 4 else "trailing bytes")
        if _U32.unpack(tail)[0] != crc:
            raise self._bad("checksum mismatch")
        if counts != self._counts:
            raise self._bad(f"records {self._counts}, the end frame says {counts}")


def write_image(
    index: int,
    kv: Iterable[tuple[bytes, bytes]],
    sessions: Iterable[tuple[bytes, bytes]],
    shard: bytes = b"",
    meta_state: bytes = b"",
    members: bytes = b"",
) -> bytes:
    """A whole image in memory (small groups and tests)."""
    buf = io.BytesIO()
    w = ImageWriter(buf, index, shard=shard, meta_state=meta_state, members=members)
    w.kv_records(kv)
    w.session_records(sessions)
    w.finish()
    return buf.getvalue()


def staged_ref(path: str) -> bytes:
    return STAGED + path.encode()


def staged_path(data: bytes) -> str | None:
    """The image file ``data`` refers to, or None when ``data`` is an image itself."""
    return data[len(STAGED) :].decode() if data.startswith(STAGED) else None


def open_image(data: bytes) -> BinaryIO:
    """A readable stream of the image ``Snapshot.data`` holds or refers to."""
    path = staged_path(data)
    if path is None:
        return io.BytesIO(data)
    try:
        return open(path, "rb")
    except OSError as e:
        raise CorruptionError(f"snapshot image file {path}: {e}", group=0) from e


class _Whole:
    """An old-format image, decoded whole, behind the ImageReader interface."""

    def __init__(self, image: Image) -> None:
        self._image = image
        self.shard, self.meta_state, self.members = image.shard, image.meta_state, image.members

    def kv(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._image.kv)

    def sessions(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._image.sessions)

    def finish(self) -> None:
        pass


@contextmanager
def image_records(group: int, index: int, data: bytes) -> Iterator[ImageReader | _Whole]:
    """The records of the image ``Snapshot.data`` holds or refers to, streamed from a
    file when it refers to one (call ``finish()`` after the last record)."""
    if staged_path(data) is None and data[:4] != MAGIC:
        yield _Whole(_read_legacy(group, index, data))
        return
    with open_image(data) as src:
        yield ImageReader(group, index, src)


def image_shard(group: int, index: int, data: bytes) -> bytes:
    """The encoded shard descriptor of the image ``Snapshot.data`` holds or refers to,
    read from its header only (cheap on the event loop; the rest is checked on install).
    Raises CorruptionError when the header is not an image's."""
    with image_records(group, index, data) as image:
        return image.shard


def verify_image(group: int, index: int, src: BinaryIO) -> None:
    """Read a whole image; raises CorruptionError if it is not one."""
    r = ImageReader(group, index, src)
    for _ in r.kv():
        pass
    for _ in r.sessions():
        pass
    r.finish()


def read_image(group: int, index: int, data: bytes) -> Image:
    """Decode a whole image held in memory; raises CorruptionError if it is not one."""
    if data[:4] != MAGIC:
        return _read_legacy(group, index, data)
    r = ImageReader(group, index, io.BytesIO(data))
    kv = list(r.kv())
    sessions = list(r.sessions())
    r.finish()
    return Image(
        index=index,
        kv=kv,
        sessions=sessions,
        shard=r.shard,
        meta_state=r.meta_state,
        members=r.members,
    )


def _read_legacy(group: int, index: int, data: bytes) -> Image:
    """Decode a KVS1-KVS4 image (whole, in memory)."""
    if len(data) < _HEAD.size + 12:
        raise CorruptionError(f"snapshot image of {len(data)} bytes", group=group, index=index)
    body = memoryview(data)[:-4]
    if zlib.crc32(body) != _U32.unpack_from(data, len(body))[0]:
        raise CorruptionError("snapshot image checksum mismatch", group=group, index=index)
    try:
        magic, at = _HEAD.unpack_from(body, 0)
        if magic not in _OLD or at != index:
            raise ValueError(f"image header {magic!r} at {at}")
        pos = _HEAD.size
        kv, pos = _pairs(body, pos)
        if magic in (b"KVS3", b"KVS4"):
            sessions, pos = _pairs(body, pos)
        else:
            sessions, pos = [], _skip_old_sessions(body, pos)
        shard = meta_state = members = b""
        if magic != b"KVS1":
            shard, pos = _take(body, pos)
            meta_state, pos = _take(body, pos)
        if magic == b"KVS4":
            members, pos = _take(body, pos)
        if pos != len(body):
            raise ValueError(f"{len(body) - pos} trailing bytes")
    except (struct.error, ValueError) as e:
        raise CorruptionError(f"malformed snapshot image: {e}", group=group, index=index) from e
    return Image(
        index=index,
        kv=kv,
        sessions=sessions,
        shard=shard,
        meta_state=meta_state,
        members=members,
    )


def _pairs(body: memoryview, pos: int) -> tuple[list[tuple[bytes, bytes]], int]:
    (n,) = _U32.unpack_from(body, pos)
    pos += 4
    out: list[tuple[bytes, bytes]] = []
    for _ in range(n):
        key, pos = _take(body, pos)
        record, pos = _take(body, pos)
        out.append((key, record))
    return out, pos


def _skip_old_sessions(body: memoryview, pos: int) -> int:
    (n,) = _U32.unpack_from(body, pos)
    pos += 4
    for _ in range(n):
        rlen = _OLD_SESSION.unpack_from(body, pos)[2]
        pos += _OLD_SESSION.size + rlen
        if pos > len(body):
            raise ValueError("session record runs past the end")
    return pos


def _take(body: memoryview, pos: int) -> tuple[bytes, int]:
    (n,) = _U32.unpack_from(body, pos)
    pos += 4
    if pos + n > len(body):
        raise ValueError("field runs past the end")
    return bytes(body[pos : pos + n]), pos + n
