"""NodeStorage end to end: save, apply, read back, reopen."""

from __future__ import annotations

from kvstore.consensus.types import Entry, EntryType, HardState
from kvstore.statemachine import KeyValue, Put, encode_batch
from kvstore.storage import NodeStorage


def put_entry(index: int, key: bytes, value: bytes, term: int = 1) -> Entry:
    return Entry(term=term, index=index, data=encode_batch([Put(key, value)]))


def test_save_apply_and_reopen(st: NodeStorage, store_path: str) -> None:
    assert st.group(1).bootstrap({1, 2, 3})
    ents = [Entry(term=1, index=1, type=EntryType.NOOP), put_entry(2, b"k", b"v")]
    with st.write() as w:
        w.save(1, hard_state=HardState(term=1, vote=1, commit=2), entries=ents)
        results = w.apply(1, ents)
    assert [r.index for r in results] == [2]
    assert st.kv(1).get(b"k") == KeyValue(b"k", b"v", 1, 2, 2)
    st.close()
    again = NodeStorage(store_path, map_size=64 << 20)
    try:
        log = again.group(1)
        assert log.initial_state()[0] == HardState(term=1, vote=1, commit=2)
        assert log.initial_state()[1].voters == {1, 2, 3}
        assert log.entries(1, 3) == ents
        assert again.kv(1).applied_index() == 2
        assert again.kv(1).get(b"k") == KeyValue(b"k", b"v", 1, 2, 2)
    finally:
        again.close()
