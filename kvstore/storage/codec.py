"""Stored encodings of log entries and group metadata. Performs no I/O.

Invariant: every log entry and metadata record carries a CRC32 (zlib's; no CRC32C module
is installed here) and decoding checks it, so flipped bytes raise CorruptionError instead
of being served. The entry checksum also covers its group and index, so a record copied
under the wrong key is caught too.

    entry   u32 crc | u64 term | u8 type | data       crc over (group, index, term, type, data)
    sealed  payload | u32 crc                          crc over (group, payload)
"""

from __future__ import annotations

import struct
import zlib

from kvstore.consensus.types import ConfState, Entry, EntryType, HardState, SnapshotMetadata
from kvstore.storage.errors import CorruptionError

_ENTRY = struct.Struct("<IQB")
_ENTRY_CRC = struct.Struct("<QQQB")
_CRC = struct.Struct("<I")
_GROUP = struct.Struct("<Q")
_HARD = struct.Struct("<QQQ")
_U64 = struct.Struct("<Q")
_COUNTS = struct.Struct("<III")
_BASE = struct.Struct("<QQ")
_TYPES = {int(t): t for t in EntryType}


def encode_entry(group: int, e: Entry) -> bytes:
    crc = zlib.crc32(e.data, zlib.crc32(_ENTRY_CRC.pack(group, e.index, e.term, e.type)))
    return _ENTRY.pack(crc, e.term, e.type) + e.data


def decode_entry(group: int, index: int, record: bytes) -> Entry:
    if len(record) < _ENTRY.size:
        raise CorruptionError(f"entry of {len(record)} bytes", group=group, index=index)
    crc, term, typ = _ENTRY.unpack_from(record, 0)
    data = record[_ENTRY.size :]
    if zlib.crc32(data, zlib.crc32(_ENTRY_CRC.pack(group, index, term, typ))) != crc:
        raise CorruptionError("entry checksum mismatch", group=group, index=index)
    etype = _TYPES.get(typ)
    if etype is None:  # cannot pass the checksum unless written so; still never guess
        raise CorruptionError(f"unknown entry type {typ}", group=group, index=index)
    return Entry(term=term, index=index, type=etype, data=data)


def seal(group: int, payload: bytes) -> bytes:
    return payload + _CRC.pack(zlib.crc32(payload, zlib.crc32(_GROUP.pack(group))))


def unseal(group: int, record: bytes, what: str) -> bytes:
    payload = record[: -_CRC.size]
    if len(record) < _CRC.size or _CRC.unpack_from(record, len(payload))[0] != zlib.crc32(
        payload, zlib.crc32(_GROUP.pack(group))
    ):
        raise CorruptionError(f"{what} checksum mismatch", group=group)
    return payload


_MEMBER = struct.Struct("<QH")


def encode_members(members: dict[int, str]) -> bytes:
    """Member addresses: n x (u64 id | u16 len | utf-8 address), by id."""
    out = []
    for node, addr in sorted(members.items()):
        raw = addr.encode()
        out.append(_MEMBER.pack(node, len(raw)) + raw)
    return b"".join(out)


def decode_members(payload: bytes) -> dict[int, str]:
    out: dict[int, str] = {}
    pos = 0
    while pos < len(payload):
        node, n = _MEMBER.unpack_from(payload, pos)
        pos += _MEMBER.size
        if pos + n > len(payload):
            raise ValueError("member address runs past the end")
        out[node] = payload[pos : pos + n].decode()
        pos += n
    return out


def encode_hard_state(hs: HardState) -> bytes:
    return _HARD.pack(hs.term, hs.vote, hs.commit)


def decode_hard_state(payload: bytes) -> HardState:
    term, vote, commit = _HARD.unpack(payload)
    return HardState(term=term, vote=vote, commit=commit)


def encode_conf_state(cs: ConfState) -> bytes:
    sets = (sorted(cs.voters), sorted(cs.learners), sorted(cs.voters_outgoing))
    ids = [i for s in sets for i in s]
    return _COUNTS.pack(*(len(s) for s in sets)) + struct.pack(f"<{len(ids)}Q", *ids)


def decode_conf_state(payload: bytes) -> ConfState:
    nv, nl, no = _COUNTS.unpack_from(payload, 0)
    ids = struct.unpack_from(f"<{nv + nl + no}Q", payload, _COUNTS.size)
    if _COUNTS.size + 8 * len(ids) != len(payload):
        raise ValueError("conf state has trailing bytes")
    return ConfState(
        voters=frozenset(ids[:nv]),
        learners=frozenset(ids[nv : nv + nl]),
        voters_outgoing=frozenset(ids[nv + nl :]),
    )


def encode_u64(n: int) -> bytes:
    return _U64.pack(n)


def decode_u64(payload: bytes) -> int:
    return _U64.unpack(payload)[0]  # type: ignore[no-any-return]


def encode_base(meta: SnapshotMetadata) -> bytes:
    """The log base: index and term just before the first stored entry, and the
    membership recorded with it."""
    return _BASE.pack(meta.index, meta.term) + encode_conf_state(meta.conf_state)


def decode_base(payload: bytes) -> SnapshotMetadata:
    index, term = _BASE.unpack_from(payload, 0)
    return SnapshotMetadata(
        index=index, term=term, conf_state=decode_conf_state(payload[_BASE.size :])
    )
