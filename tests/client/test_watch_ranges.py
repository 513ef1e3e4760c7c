"""The client's watch ranges: etcd's key/prefix/range_end rules, and how a range is cut
along shards (kvstore/client/_watch.py)."""

from __future__ import annotations

import pytest

from kvstore._pb import kv_pb2
from kvstore.client._watch import _clip, _tiles, _wire_end, prefix_end, range_of
from kvstore.client.errors import InvalidArgument
from kvstore.server.watch import pack, watched_range
from kvstore.shard.descriptor import Descriptor
from kvstore.statemachine.history import Event, EventKind
from kvstore.statemachine.types import KeyValue


def pack_check(msgs: list[kv_pb2.WatchResponse]) -> list[int]:
    """The revisions of the messages' events; a non-fragment's progress covers them."""
    out: list[int] = []
    for m in msgs:
        revs = [e.kv.mod_revision for e in m.events]
        assert m.fragment or not revs or m.progress_revision >= max(revs)
        out += revs
    return out


def test_prefix_end() -> None:
    assert prefix_end(b"app/") == b"app0"
    assert prefix_end(b"a\xff\xff") == b"b"
    assert prefix_end(b"\xff") == b"" and prefix_end(b"") == b""


@pytest.mark.parametrize(
    ("key", "prefix", "end", "want"),
    [
        (b"k", False, None, (b"k", b"k\0")),
        (b"k", True, None, (b"k", b"l")),
        (b"a", False, b"c", (b"a", b"c")),
        (b"a", False, b"\0", (b"a", b"")),
    ],
)
def test_range_of_and_the_wire_round_trip(
    key: bytes, prefix: bool, end: bytes | None, want: tuple[bytes, bytes]
) -> None:
    lo, hi = range_of(key, prefix, end)
    assert (lo, hi) == want
    req = kv_pb2.WatchRequest(key=lo, range_end=_wire_end(lo, hi))
    assert watched_range(req) == want


def test_bad_ranges_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        range_of(b"b", False, b"a")
    with pytest.raises(InvalidArgument):
        range_of(b"b", True, b"c")


def test_cutting_along_shards() -> None:
    left = Descriptor(id=1, end=b"m")
    right = Descriptor(id=2, start=b"m")
    assert _tiles([left, right], b"a", b"z") and _tiles([right, left], b"a", b"")
    assert not _tiles([left], b"a", b"z") and not _tiles([right], b"a", b"z")
    assert _clip(b"a", b"z", left) == (b"a", b"m") and _clip(b"a", b"", right) == (b"m", b"")


def test_messages_keep_revisions_whole_unless_fragmented() -> None:
    big = b"x" * (1 << 20)
    evs = [
        Event(r, EventKind.PUT, b"k%d" % i, KeyValue(b"k%d" % i, big, 1, r, r), None)
        for r, i in [(5, 0), (5, 1), (5, 2), (6, 3), (7, 4), (7, 5)]
    ]
    msgs = pack(evs, 9, prev_kv=False)
    assert pack_check(msgs) == [5, 5, 5, 6, 7, 7]
    # A message that ends inside a revision is a fragment whose progress is below it.
    for m in msgs:
        revs = {e.kv.mod_revision for e in m.events}
        if m.fragment:
            assert m.progress_revision == min(revs) - 1
        else:
            assert m.progress_revision >= max(revs)
    assert msgs[-1].progress_revision == 9 and not msgs[-1].fragment


def test_shared_reads_hold_bounded_memory() -> None:
    """Watchers catching up from many different revisions each leave a read of up to
    MAX_READ_BYTES in the shared cache: 256 of them pinned ~0.5 GiB until the cache
    filled by count. The cache is bounded by bytes too."""
    from kvstore.server.watch import MAX_READ_BYTES, READ_CACHE_ENTRIES, WatchHub

    big = b"x" * (MAX_READ_BYTES - 1024)
    hub = WatchHub()
    ev = Event(1, EventKind.PUT, b"k", KeyValue(b"k", big, 1, 1, 1), None)
    msgs = pack([ev], 1, prev_kv=False)  # one read, kept under many keys
    size = sum(m.ByteSize() for m in msgs)
    most = 0
    for n in range(READ_CACHE_ENTRIES - 1):
        hub.keep((1, b"", b"", n + 1, False), (msgs, n + 1, n + 1, True))
        most = max(most, len(hub._reads))
    assert most * size <= 64 << 20
