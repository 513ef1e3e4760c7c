"""KVReader: the read side of one group's key-value state (``NodeStorage.kv(group)``).

Invariant: every call reads one committed LMDB snapshot, so a scan is consistent and the
``*_with_applied`` variants return the applied index that the answer reflects, and the
``*_at`` variants also its applied time (the causal token, statemachine/apply.py). Scans stay
inside the range the group owns (its shard descriptor as of the last committed write);
``get`` reads the key as asked (the server checks the range before reading).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvstore.statemachine.leases import LeaseRecord
from kvstore.statemachine.types import KeyValue
from kvstore.storage import codec, keys
from kvstore.storage.tables import GroupTables, owned_range

if TYPE_CHECKING:
    from kvstore.storage.env import NodeStorage


class KVReader:
    def __init__(self, storage: NodeStorage, group: int) -> None:
        self._st = storage
        self.group = group

    def _tables(self, txn: Any) -> GroupTables:
        shard = self._st.group(self.group).view.shard
        return GroupTables(txn, self._st.dbs, self.group, owned_range(self.group, shard))

    def get(self, key: bytes) -> KeyValue | None:
        with self._st.env.begin() as txn:
            return self._tables(txn).get(key)

    def scan(self, start: bytes = b"", end: bytes = b"", limit: int = 0) -> list[KeyValue]:
        """Keys in [start, end) in key order; ``end=b""`` means to the end of the key
        space, ``limit <= 0`` means no limit."""
        with self._st.env.begin() as txn:
            return self._tables(txn).scan(start, end, limit)

    def measure(self, max_keys: int = 0, max_bytes: int = 0) -> tuple[int, int]:
        """(keys, bytes of keys and stored records) in the owned range, without decoding;
        counting stops once either passes its cap (``<= 0``: no cap), so the cost is
        bounded by the caps, not by the shard's size."""
        n = size = 0
        with self._st.env.begin() as txn:
            for key, record in self._tables(txn).raw_kv():
                n += 1
                size += len(key) + len(record)
                if 0 < max_keys < n or 0 < max_bytes < size:
                    break
        return n, size

    def leases(self) -> list[tuple[int, LeaseRecord]]:
        """Every lease the group holds, by id (as of the last committed write)."""
        with self._st.env.begin() as txn:
            return GroupTables(txn, self._st.dbs, self.group).leases.all()

    def lease(self, lease: int) -> LeaseRecord | None:
        with self._st.env.begin() as txn:
            return GroupTables(txn, self._st.dbs, self.group).lease(lease)

    def lease_keys(self, lease: int, limit: int = 0) -> list[bytes]:
        """The keys attached to ``lease`` (``limit`` > 0: at most that many)."""
        with self._st.env.begin() as txn:
            return GroupTables(txn, self._st.dbs, self.group).leases.keys_of(lease, limit)

    def applied_index(self) -> int:
        """The applied index as of the last committed write (from memory)."""
        return self._st.group(self.group).view.applied

    def get_with_applied(self, key: bytes) -> tuple[KeyValue | None, int]:
        """``get`` plus the applied index it reflects, read in the same transaction."""
        with self._st.env.begin() as txn:
            return self._tables(txn).get(key), self._applied(txn)

    def applied_time(self) -> int:
        """The group's applied time as of the last committed write."""
        with self._st.env.begin() as txn:
            return GroupTables(txn, self._st.dbs, self.group).applied_time()

    def log_time(self) -> int:
        """The group's log time (session expiry) as of the last committed write."""
        with self._st.env.begin() as txn:
            return GroupTables(txn, self._st.dbs, self.group).clock()

    def get_at(self, key: bytes) -> tuple[KeyValue | None, int, int]:
        """``get`` plus the applied index and applied time it reflects (one transaction)."""
        with self._st.env.begin() as txn:
            tables = self._tables(txn)
            return tables.get(key), self._applied(txn), tables.applied_time()

    def scan_with_applied(
        self, start: bytes = b"", end: bytes = b"", limit: int = 0
    ) -> tuple[list[KeyValue], int]:
        with self._st.env.begin() as txn:
            tables = self._tables(txn)
            return tables.scan(start, end, limit), self._applied(txn)

    def scan_page_with_applied(
        self, start: bytes, end: bytes, limit: int, max_bytes: int
    ) -> tuple[list[KeyValue], bool, int]:
        """One page of a scan (``GroupTables.scan_page``): rows, whether more remain, and
        the applied index they reflect."""
        with self._st.env.begin() as txn:
            tables = GroupTables(txn, self._st.dbs, self.group)
            kvs, more = tables.scan_page(start, end, limit, max_bytes)
            return kvs, more, self._applied(txn)

    def scan_page_at(
        self, start: bytes, end: bytes, limit: int, max_bytes: int
    ) -> tuple[list[KeyValue], bool, int, int]:
        """``scan_page_with_applied`` plus the applied time (one transaction)."""
        with self._st.env.begin() as txn:
            tables = GroupTables(txn, self._st.dbs, self.group)
            kvs, more = tables.scan_page(start, end, limit, max_bytes)
            return kvs, more, self._applied(txn), tables.applied_time()

    def _applied(self, txn: Any) -> int:
        record = txn.get(keys.meta_key(self.group, keys.TAG_APPLIED), db=self._st.dbs.meta)
        if record is None:
            return self._st.group(self.group).view.base.index
        return codec.decode_u64(codec.unseal(self.group, record, "applied index"))
