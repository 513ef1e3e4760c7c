"""NodeStorage: one LMDB environment per node, hosting every group's log and state.

Invariant: a write is durable when ``write()`` returns (``durable=False``: below). Each
``with st.write() as w:`` is ONE LMDB write transaction: committed (and, with
``sync=True``, flushed to disk) when the block exits normally, aborted when it raises.
Group commit = put every group's Ready into one ``write()``.

``write(durable=False)`` (the node's apply-only transactions, node/persist.py) commits
with one device flush instead of two and may be undone by a machine crash or power loss,
never by a process crash; it is never torn: LMDB runs with MDB_NOMETASYNC, so each commit
flushes its data pages before it writes its meta page, and the meta page is flushed by
the next commit's data flush or, for a durable write, by an explicit ``env.sync`` before
``write()`` returns. So what survives a machine crash is always a prefix of the committed
transactions that ends at or after the last durable one.

``sync=False`` (benchmarks only) opens LMDB with MDB_NOSYNC: commits reach the OS page
cache but are not fsynced, so they survive a process crash (kill -9) but not a machine
crash or power loss; ``sync()`` flushes on demand and ``close()`` flushes at the end.

Threads: writes may run in one writer thread while reads (GroupLog, KVReader) run in
another; LMDB readers never block the writer. Writes from several threads are serialized.
Do not nest ``write()`` in one thread (it would deadlock).
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO

import lmdb

from kvstore.consensus.types import HardState
from kvstore.storage import keys, tombstone
from kvstore.storage.errors import StorageError, StorageFullError
from kvstore.storage.history import DEFAULT_HISTORY_REVISIONS, start_history
from kvstore.storage.log import TAIL_ENTRIES, GroupLog, LogView, load_view
from kvstore.storage.reader import KVReader
from kvstore.storage.tables import Dbs, delete_range
from kvstore.storage.writer import Writer

_SUBDBS = (b"log", b"meta", b"snapshot", b"kv", b"sessions", b"history")


def reserve_bytes(map_size: int) -> int:
    """The part of the map kept free for deletes and compaction: 1/8 of it, at least
    16 MiB, at most half. Enough for the copy-on-write pages a delete or a compaction
    needs, and for the writes admitted between two persists."""
    return min(map_size // 2, max(map_size // 8, 16 << 20))


class NodeStorage:
    def __init__(
        self,
        path: str,
        *,
        map_size: int = 1 << 30,
        sync: bool = True,
        cache_entries: int = TAIL_ENTRIES,
    ) -> None:
        """Open (creating if needed) the environment in directory ``path``. ``map_size``
        caps the data size in bytes; past it writes raise StorageFullError. Above
        ``high_water`` (the map less ``reserve_bytes``) the store is ``tight``: callers
        refuse writes that add data and compact, so deletes always find room.
        ``cache_entries``: log entries per group kept in memory (the tail)."""
        os.makedirs(path, exist_ok=True)
        self._lockfile = _lock_dir(path)
        self.path = path
        self.sync_writes = sync
        self.cache_entries = cache_entries
        self.history_revisions = DEFAULT_HISTORY_REVISIONS
        """Revisions of history each group keeps (0: all until compacted; storage/history.py)."""
        self.stream_snapshots = False
        """True (a node): ``GroupLog.snapshot()`` leaves the image out; the node builds
        and streams it off the event loop (node/snapshot_send.py)."""
        try:
            self.env = lmdb.open(
                path,
                map_size=map_size,
                max_dbs=len(_SUBDBS),
                sync=sync,
                # The meta page is flushed by write(durable=True) itself (module doc).
                metasync=False,
                readahead=False,
                max_readers=512,
            )
        except lmdb.Error as e:
            self._lockfile.close()
            raise StorageError(f"cannot open LMDB environment in {path}: {e}") from e
        try:
            # Reader slots left by a killed process pin old pages (the file would only
            # grow): clear them at start.
            self.env.reader_check()
            if self.env.max_key_size() < 511:
                raise StorageError(f"LMDB max key size {self.env.max_key_size()} < 511")
            with self.env.begin(write=True) as txn:
                dbs = [self.env.open_db(name, txn=txn) for name in _SUBDBS]
                _migrate_kv_layout(txn, Dbs(*dbs))
                _migrate_long_keys(txn, Dbs(*dbs))
                _upgrade_sessions(txn, Dbs(*dbs))
                start_history(txn, Dbs(*dbs))
        except BaseException:
            self.env.close()
            self._lockfile.close()
            raise
        self.dbs = Dbs(*dbs)
        self._all_dbs = list(dbs)
        self.high_water = map_size - reserve_bytes(map_size)
        self._psize = int(self.env.stat()["psize"])
        self.live = self.live_bytes()
        """Bytes in pages that hold data as of the last commit (free pages not counted);
        while the file's used pages fit under ``high_water``, those (an upper bound)."""
        self._groups: dict[int, GroupLog] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        self._sweep_from: dict[int, bytes] = {}
        self.undecodable = 0
        """NORMAL entries whose data was not a batch (applied as nothing), since open."""

    # -- groups ---------------------------------------------------------------
    def group(self, group: int) -> GroupLog:
        """The LogStorage of ``group`` (the same object on every call)."""
        log = self._groups.get(group)
        if log is not None:
            return log
        keys.check_group(group)
        with self._lock:
            log = self._groups.get(group)
            if log is None:
                with self.env.begin() as txn:
                    view = load_view(txn, self.dbs, group, self.cache_entries)
                log = self._groups[group] = GroupLog(self, group, view)
        return log

    def groups(self) -> list[int]:
        """Ids of the groups that have a log base or metadata stored, in order."""
        found: set[int] = set()
        with self.env.begin() as txn:
            for db in (self.dbs.snapshot, self.dbs.meta):
                for k in txn.cursor(db=db).iternext(values=False):
                    if not k.startswith(keys.NODE_META_PREFIX):
                        found.add(int.from_bytes(k[:8], "big"))
        return sorted(found)

    def kv(self, group: int) -> KVReader:
        """Reads of ``group``'s user data (within the range it owns)."""
        return KVReader(self, keys.check_group(group))

    def _view(self, group: int) -> LogView:
        return self.group(group).view

    # -- node metadata ----------------------------------------------------------
    def get_meta(self, key: bytes) -> bytes | None:
        with self.env.begin(db=self.dbs.meta) as txn:
            value: bytes | None = txn.get(keys.node_meta_key(key))
            return value

    def tombstone(self, group: int) -> HardState | None:
        """The promises kept of a replica of ``group`` this node destroyed (tombstone.py)."""
        with self.env.begin() as txn:
            return tombstone.read(txn, self.dbs, keys.check_group(group))

    def tombstone_log(self, group: int) -> tuple[int, int]:
        """(term, index) of the last entry a destroyed replica of ``group`` stored
        (tombstone.destroyed_log)."""
        with self.env.begin() as txn:
            return tombstone.destroyed_log(txn, self.dbs, keys.check_group(group))

    def get_group_meta(self, group: int, tag: bytes) -> bytes | None:
        """A group's sealed metadata record (keys.TAG_*), as last committed."""
        with self.env.begin(db=self.dbs.meta) as txn:
            value: bytes | None = txn.get(keys.meta_key(group, tag))
            return value

    # -- writes -------------------------------------------------------------------
    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[Writer]:
        """One write transaction. Commits (durably when ``sync`` and ``durable``) on
        normal exit and then publishes the new group views; aborts on any exception. A
        full map raises StorageFullError with the transaction aborted. ``durable=False``:
        see the module doc; only for transactions whose every change can be rebuilt from
        what durable ones hold (one that applies a shard admin entry is flushed anyway:
        ``Writer.must_flush``)."""
        # Held from begin to publish: a second writer must not start from views that
        # the first has committed but not yet published.
        with self._write_lock:
            txn = self.env.begin(write=True)
            w = Writer(
                txn,
                self.dbs,
                self._view,
                self.cache_entries,
                self._sweep_from,
                self.history_revisions,
            )
            try:
                yield w
                txn.commit()
            except (lmdb.MapFullError, lmdb.TxnFullError) as e:
                _abort(txn)
                used, size = self.usage()
                self.live = max(self.live, self.high_water + 1)
                raise StorageFullError(f"LMDB map full ({used} of {size} bytes used): {e}") from e
            except lmdb.Error as e:
                # A full (or failing) file system fails the commit while LMDB writes the
                # transaction's pages (ENOSPC, or EIO on tmpfs), before its meta page: the
                # durable state is the previous transaction's and a retry writes every page
                # again (no writemap). Refuse like a full map (writers get
                # RESOURCE_EXHAUSTED, the persist retries) instead of stopping the node; a
                # failure that broke the environment raises PanicError on the next begin.
                _abort(txn)
                if not _UNWRITABLE.search(str(e)):
                    raise
                self.live = max(self.live, self.high_water + 1)
                raise StorageFullError(f"disk write failed (file system full?): {e}") from e
            except BaseException:
                _abort(txn)
                raise
            self.undecodable += w.undecodable
            self.live = self._live_after_commit()
            for g, view in w.publish().items():
                log = self.group(g)
                log.view = view
                if g in w.dropped:
                    log.forget_snapshot()
            if (durable or w.must_flush) and self.sync_writes:
                self._flush_meta()

    def _flush_meta(self) -> None:
        """Make the last commit durable: its data pages are on disk already (LMDB flushed
        them before writing the meta page), this flushes the meta page. A failed flush
        may have lost the commit, which is visible already: the node must stop and
        restart from what is durable (retrying the flush could report success falsely)."""
        try:
            self.env.sync(True)
        except lmdb.Error as e:
            raise StorageError(f"flushing a committed transaction failed: {e}") from e

    def sync(self) -> None:
        """Flush committed writes to disk (needed only with ``sync=False``)."""
        self.env.sync(True)

    @property
    def tight(self) -> bool:
        """Data above the high-water mark: only deletes and compaction should go in."""
        return self.live > self.high_water

    def _live_after_commit(self) -> int:
        """``live`` after a commit. The pages up to the file's last used one bound the
        live pages from above, so while they fit under the mark the store cannot be tight
        and the exact count (a read transaction and a stat of every table: 15-20% of the
        writer thread's Python at one client, profile_write.py) is not needed."""
        used = (int(self.env.info()["last_pgno"]) + 1) * self._psize
        return used if used <= self.high_water else self.live_bytes()

    def live_bytes(self) -> int:
        """Bytes in the pages of every table (pages on LMDB's free list, which writes
        reuse, are not counted, so deletes and compaction bring this down)."""
        with self.env.begin() as txn:
            stats = [self.env.stat(), *(txn.stat(db) for db in self._all_dbs)]
        pages = sum(s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"] for s in stats)
        return int(pages * stats[0]["psize"])

    def usage(self) -> tuple[int, int]:
        """(bytes in use, map size): for metrics and a warning before the map fills."""
        info, stat = self.env.info(), self.env.stat()
        return (info["last_pgno"] + 1) * stat["psize"], info["map_size"]

    def close(self) -> None:
        """Flush (when ``sync=False``) and close; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.sync_writes:
                self.env.sync(True)
            self.env.close()
        finally:
            self._lockfile.close()  # releases the flock

    def __enter__(self) -> NodeStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _migrate_kv_layout(txn: lmdb.Transaction, dbs: Dbs) -> None:
    """Move user data written under ``group u64 | key`` (before sharding) to
    ``DATA_PREFIX | key`` in the opening transaction: all or nothing, never lost."""
    marker = keys.node_meta_key(keys.LAYOUT)
    if txn.get(marker, db=dbs.meta) == keys.LAYOUT_V2:
        return
    old = list(txn.cursor(db=dbs.kv))
    for k, _ in old:
        txn.delete(k, db=dbs.kv)
    for k, v in old:
        if len(k) >= 8:
            txn.put(keys.DATA_PREFIX + bytes(k[8:]), v, db=dbs.kv)
    txn.put(marker, keys.LAYOUT_V2, db=dbs.meta)


_LONG_KEYS = b"kv_long_keys"


def _migrate_long_keys(txn: lmdb.Transaction, dbs: Dbs) -> None:
    """Re-store keys longer than KEY_INLINE that were written whole (up to 510 bytes,
    before long keys) in the long form (keys.py), in the opening transaction; once. A
    marker of its own (not a layout version) so that an older binary that knows only
    layout 2 never takes this directory for a layout 1 one and re-keys it."""
    marker = keys.node_meta_key(_LONG_KEYS)
    if txn.get(marker, db=dbs.meta) == b"1":
        return
    inline = len(keys.DATA_PREFIX) + keys.KEY_INLINE
    cur = txn.cursor(db=dbs.kv)
    old = [bytes(k) for k in cur.iternext(keys=True, values=False) if len(k) > inline]
    for k in old:
        v = txn.pop(k, db=dbs.kv)
        assert v is not None
        key = k[len(keys.DATA_PREFIX) :]
        txn.put(keys.kv_key(key), keys.long_value(key, bytes(v)), db=dbs.kv)
    txn.put(marker, b"1", db=dbs.meta)


_SESSIONS_FORMAT = b"sessions_format"


def _upgrade_sessions(txn: lmdb.Transaction, dbs: Dbs) -> None:
    """Session tables written before sessions had incarnations (format 1) are emptied:
    they answer only client_id-without-incarnation requests, which nodes now refuse, so
    no answer can depend on them."""
    key = keys.node_meta_key(_SESSIONS_FORMAT)
    if txn.get(key, db=dbs.meta) == b"2":
        return
    delete_range(txn, dbs.sessions, b"", b"\xff" * 64)
    txn.put(key, b"2", db=dbs.meta)


def _lock_dir(path: str) -> IO[bytes]:
    """Take an exclusive lock on the data directory for this NodeStorage's lifetime: two
    nodes (or two opens in one process, which LMDB forbids) must not share one environment."""
    f = open(os.path.join(path, "kvstore.lock"), "ab")  # noqa: SIM115 - held until close()
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.close()
        raise StorageError(f"data directory {path} is in use by another NodeStorage") from e
    return f


_UNWRITABLE = re.compile(r"No space left on device|Input/output error")


def _abort(txn: lmdb.Transaction) -> None:
    # After a failed commit LMDB has already released the transaction; aborting again
    # must not hide the error that got us here.
    with suppress(lmdb.Error):
        txn.abort()
