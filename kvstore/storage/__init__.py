"""LMDB storage of a node: every group's log, metadata, snapshots and key-value state in
one environment (see env.py for the durability rule, keys.py for the key layout).

    st = NodeStorage(path, map_size=1 << 30, sync=True, cache_entries=512)   # one per node
    log = st.group(g)            # GroupLog: the core's LogStorage (+ bootstrap, applied_index)
    log.bootstrap(voters)        # brand-new group only; False (no change) otherwise
    st.get_meta(b"cluster_id")   # node-level metadata
    with st.write() as w:        # ONE transaction = one fsync, for any number of groups
        w.set_meta(key, value)
        w.save(g, hard_state=..., entries=..., snapshot=...)   # the Ready persist
        results = w.apply(g, committed)    # flat list[ApplyResult], one per command
        w.set_conf_state(g, conf_state)    # after applying a CONF_CHANGE entry
        w.compact(g, index)                # drop entries <= index (index <= applied)
        w.drop_group(g)                    # a replica moved away
    st.kv(g).get(key) / .scan(start, end, limit) / .applied_index()     # KVReader
    st.close()

Errors: StorageFullError (map full; the transaction was aborted), CorruptionError (a
checksum failed; names the group and log index; the data is never served).
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
