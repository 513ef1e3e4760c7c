"""Micro-benchmark of NodeStorage write transactions (the node's fsync budget).

    python -m kvstore.storage.bench [--dir DIR] [--seconds 2] [--value-size 256]

Each transaction saves N entries (each a batch of M Puts of ``value-size`` bytes) plus a
hard state and applies them, as one Ready does; reported as transactions and puts per
second with sync on (one fsync per commit) and, for contrast, off.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import lmdb

from kvstore.consensus.types import Entry, HardState
from kvstore.statemachine import Put, encode_batch
from kvstore.storage.env import NodeStorage


def run(
    path: str, *, sync: bool, per_txn: int, seconds: float, value_size: int, per_entry: int = 1
) -> float:
    """Write transactions of ``per_txn`` entries (each a batch of ``per_entry`` Puts) for
    ``seconds``; returns txns/s."""
    value = b"v" * value_size
    with NodeStorage(path, sync=sync) as st:
        index, txns = st.group(1).last_index(), 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            ents = []
            for i in range(index + 1, index + per_txn + 1):
                cmds = [Put(b"k%d.%d" % (i, j), value) for j in range(per_entry)]
                ents.append(Entry(term=1, index=i, data=encode_batch(cmds)))
            index += per_txn
            with st.write() as w:
                w.save(1, hard_state=HardState(term=1, vote=1, commit=index), entries=ents)
                w.apply(1, ents)
                if index > 10_000:
                    w.compact(1, index - 5_000)
            txns += 1
        return txns / (time.perf_counter() - start)


def raw_commits(path: str, seconds: float) -> float:
    """Synced LMDB commits/s of one small put each: the fsync floor under everything else."""
    env = lmdb.open(path, map_size=1 << 28, sync=True)
    try:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            with env.begin(write=True) as txn:
                txn.put(b"k%d" % n, b"v")
            n += 1
        return n / (time.perf_counter() - start)
    finally:
        env.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--dir", default=None, help="where to create the environment (default: a temp dir)"
    )
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--value-size", type=int, default=256)
    args = ap.parse_args()
    path = tempfile.mkdtemp(prefix="kvbench", dir=args.dir)
    try:
        print(f"raw LMDB synced commits: {raw_commits(path, args.seconds):7.0f} txn/s")
    finally:
        shutil.rmtree(path, ignore_errors=True)
    for sync in (True, False):
        for per_txn, per_entry in ((1, 1), (64, 1), (1, 64)):
            path = tempfile.mkdtemp(prefix="kvbench", dir=args.dir)
            try:
                rate = run(
                    path,
                    sync=sync,
                    per_txn=per_txn,
                    per_entry=per_entry,
                    seconds=args.seconds,
                    value_size=args.value_size,
                )
            finally:
                shutil.rmtree(path, ignore_errors=True)
            puts = rate * per_txn * per_entry
            print(
                f"sync={'on ' if sync else 'off'} entries/txn={per_txn:<3d} "
                f"puts/entry={per_entry:<3d} {rate:7.0f} txn/s {puts:8.0f} puts/s"
            )


if __name__ == "__main__":
    main()
