"""Faults: a full map, flipped bytes on disk and in records, and kill -9 mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kvstore.consensus.types import Entry, HardState
from kvstore.statemachine import KeyValue, Put, encode_batch
from kvstore.storage import CorruptionError, NodeStorage, StorageFullError, keys

MAP = 1 << 20


def put(index: int, key: bytes, value: bytes) -> Entry:
    return Entry(term=1, index=index, data=encode_batch([Put(key, value)]))


# -- a full map -----------------------------------------------------------------------
def test_a_write_larger_than_the_map_fails_cleanly(tmp_path: Path) -> None:
    with NodeStorage(str(tmp_path), map_size=MAP) as st:
        e1 = put(1, b"a", b"small")
        with st.write() as w:
            w.save(1, entries=[e1])
            w.apply(1, [e1])
        big = put(2, b"b", b"x" * (2 * MAP))
        with pytest.raises(StorageFullError, match="map full"), st.write() as w:
            w.save(1, hard_state=HardState(term=2), entries=[big])
            w.apply(1, [big])
        log = st.group(1)
        assert (log.last_index(), log.initial_state()[0]) == (1, HardState())
        assert st.kv(1).get(b"a") == KeyValue(b"a", b"small", 1, 1, 1)
        e2 = put(2, b"b", b"fits")
        with st.write() as w:  # the environment stays writable
            w.save(1, entries=[e2])
            w.apply(1, [e2])
        assert st.kv(1).get(b"b") is not None


def test_filling_the_map_keeps_every_committed_write(tmp_path: Path) -> None:
    committed = 0
    with NodeStorage(str(tmp_path), map_size=MAP) as st:
        with pytest.raises(StorageFullError):
            for i in range(1, 1000):
                e = put(i, str(i).encode(), b"v" * 8000)
                with st.write() as w:
                    w.save(1, entries=[e])
                    w.apply(1, [e])
                committed = i
        assert 10 < committed < 1000
        assert st.group(1).last_index() == st.kv(1).applied_index() == committed
        assert len(st.kv(1).scan()) == committed
        assert st.group(1).entries(1, 2)[0] == put(1, b"1", b"v" * 8000)
    with NodeStorage(str(tmp_path), map_size=4 * MAP) as bigger:  # grow the map on reopen
        assert bigger.kv(1).applied_index() == committed
        e = put(committed + 1, b"more", b"v")
        with bigger.write() as w:
            w.save(1, entries=[e])


# -- corruption -------------------------------------------------------------------------
def test_a_flipped_byte_in_a_stored_entry_is_reported_not_served(tmp_path: Path) -> None:
    with NodeStorage(str(tmp_path), cache_entries=0) as st:
        ents = [put(i, b"k", b"v%d" % i) for i in range(1, 4)]
        with st.write() as w:
            w.save(9, entries=ents)
        with st.env.begin(write=True) as txn:
            k = keys.log_key(9, 2)
            raw = bytearray(txn.get(k, db=st.dbs.log))
            raw[-1] ^= 0x20
            txn.put(k, bytes(raw), db=st.dbs.log)
        log = st.group(9)
        assert log.entries(1, 2) == ents[:1]
        with pytest.raises(CorruptionError, match="group 9 index 2") as err:
            log.entries(1, 4)
        assert (err.value.group, err.value.index) == (9, 2)
        with pytest.raises(CorruptionError):
            log.term(2)


def test_a_flipped_byte_in_the_data_file_is_detected_on_reopen(tmp_path: Path) -> None:
    marker = b"MARKER-0123456789-abcdef"
    with NodeStorage(str(tmp_path)) as st, st.write() as w:
        w.save(5, entries=[Entry(term=1, index=1, data=marker), put(2, b"x", b"y")])
    data_file = tmp_path / "data.mdb"
    raw = bytearray(data_file.read_bytes())
    at = raw.find(marker)
    assert at > 0 and raw.find(marker, at + 1) == -1
    raw[at + 3] ^= 0x01
    data_file.write_bytes(bytes(raw))
    with NodeStorage(str(tmp_path)) as st, pytest.raises(CorruptionError, match="group 5 index 1"):
        st.group(5)  # loading the cached tail reads and verifies it


def test_corrupt_metadata_is_reported(tmp_path: Path) -> None:
    with NodeStorage(str(tmp_path)) as st:
        with st.write() as w:
            w.save(2, hard_state=HardState(term=4, vote=1, commit=0))
        with st.env.begin(write=True) as txn:
            k = keys.meta_key(2, keys.TAG_HARD_STATE)
            txn.put(k, b"\x01" + txn.get(k, db=st.dbs.meta)[1:], db=st.dbs.meta)
    with NodeStorage(str(tmp_path)) as st, pytest.raises(CorruptionError, match="hard state"):
        st.group(2)


# -- kill -9 ----------------------------------------------------------------------------
WRITER = """
import sys
from kvstore.consensus.types import Entry, HardState
from kvstore.statemachine import Put, encode_batch
from kvstore.storage import NodeStorage
st = NodeStorage(sys.argv[1])
i = st.group(1).last_index()
while True:
    i += 1
    cmds = [Put(b"k%d" % i, b"v" * 100), Put(b"last", b"%d" % i)]
    ents = [Entry(term=1, index=i, data=encode_batch(cmds))]
    with st.write() as w:
        w.save(1, hard_state=HardState(term=1, commit=i), entries=ents)
        w.apply(1, ents)
        w.save(2, entries=[Entry(term=1, index=i)])
    print(i, flush=True)
"""


@pytest.mark.timeout(120)
def test_kill_9_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    """A writer process prints each index after its write() returned; kill -9 it at a
    random point, twice: every printed index must be there, and log, applied index, kv
    and the second group must agree (each transaction is all or nothing)."""
    acked = 0
    repo = str(Path(__file__).resolve().parents[2])
    for _ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": repo},
        )
        assert proc.stdout is not None
        try:
            for _ in range(40):
                acked = int(proc.stdout.readline())
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        with NodeStorage(str(tmp_path)) as st:
            log, kv = st.group(1), st.kv(1)
            last = log.last_index()
            assert last >= acked, "an acknowledged write was lost"
            assert kv.applied_index() == last == log.initial_state()[0].commit
            assert st.group(2).last_index() == last, "one transaction spans both groups"
            assert kv.get(b"last") == KeyValue(b"last", b"%d" % last, last, 1, last)
            assert len(kv.scan(b"k", b"l")) == last
