"""LMDB storage of a node: every group's log, metadata, snapshots and key-value state in
one environment (see env.py for the durability rule, keys.py for the key layout).

    st = NodeStorage(path)                 # one per node
    log = st.group(g)                      # GroupLog: the core's LogStorage
    with st.write() as w:                  # one transaction, one fsync, many groups
        w.save(g, hard_state, entries, snapshot); results = w.apply(g, committed)
    st.kv(g).get(key)                      # KVReader
"""

from kvstore.storage.env import NodeStorage
from kvstore.storage.errors import CorruptionError, StorageError, StorageFullError
from kvstore.storage.log import GroupLog, LogView
from kvstore.storage.reader import KVReader
from kvstore.storage.writer import Writer

__all__ = [
    "CorruptionError",
    "GroupLog",
    "KVReader",
    "LogView",
    "NodeStorage",
    "StorageError",
    "StorageFullError",
    "Writer",
]
