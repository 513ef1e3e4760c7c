"""Online merge of two adjacent shards with real processes (docs/sharding.md, "Merge"):
5 nodes, 4 shards. Shard 3 splits (the halves sit on the same nodes) and merges back
while writers run compare-and-set counters on keys of both halves (a write applied twice
or lost breaks the chain) and a reader reads them strongly; nothing acknowledged is lost,
the map tiles again, and a client holding the map from before the merge keeps working.
Bad merges (a shard that does not exist, the last shard, shards on different nodes) are
refused with the reason and change nothing. Both consensus cores.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from kvstore.client import Client

from .harness import LocalCluster, wait_for

NODES, SHARDS = 5, 4


def _cli(c: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli", *args, "--endpoints", ",".join(c.endpoints)],
        capture_output=True,
        text=True,
        timeout=90,
    )


def _merge(c: LocalCluster, shard: int, attempts: int = 3) -> subprocess.CompletedProcess[str]:
    """``kvstore shard merge``, again when it rolled back: the placement loop may change a
    shard's members meanwhile (it balances a young cluster), which makes the merge give
    up cleanly (a membership change of the target refuses its CommitMerge)."""
    for _ in range(attempts):
        out = _cli(c, "shard", "merge", str(shard))
        if out.returncode == 0 or "rolled back" not in out.stderr:
            return out
    return out


@pytest.fixture
def sharded(tmp_path: Path, consensus: str) -> Any:
    c = LocalCluster(tmp_path, nodes=NODES, consensus=consensus, extra=["--shards", str(SHARDS)])
    try:
        c.start()
        wait_for(lambda: c.group_leaders().keys() >= {0, 1, 2, 3, 4}, 60, "a leader per shard")
        yield c
    finally:
        c.close()


def _refuses_bad_merges(c: LocalCluster) -> None:
    with c.client(timeout=20) as kv:
        before = kv.shards()
    last = max(before, key=lambda r: r["start"])["id"]
    refused = {
        "99": "does not exist",
        str(last): "last shard",
        "1": "not on the same nodes",  # shards 1 and 2 sit on different node sets
    }
    for shard, why in refused.items():
        out = _cli(c, "shard", "merge", shard)
        assert out.returncode == 3, (shard, out.stdout, out.stderr)
        assert why in out.stderr, (shard, out.stderr)
    with c.client(timeout=20) as kv:
        after = kv.shards()
    fields = ("id", "start", "end", "version", "conf_ver", "voters")
    assert [{k: r[k] for k in fields} for r in before] == [{k: r[k] for k in fields} for r in after]


def test_merge_online_under_writes_with_a_stale_client(sharded: LocalCluster) -> None:
    c = sharded
    _refuses_bad_merges(c)
    with c.client(timeout=20) as kv:
        rows = {r["id"]: r for r in kv.shards()}
        lo, hi = rows[3]["start"], rows[3]["end"]
        at = lo + "m"  # inside shard 3's range
        out = _cli(c, "shard", "split", "3", "--at", at)
        assert out.returncode == 0, out.stderr
        rows = {r["id"]: r for r in kv.shards()}
        new = next(i for i in rows if i not in (1, 2, 3, 4))
        assert rows[new]["start"] == at and rows[new]["voters"] == rows[3]["voters"]
        names = [lo + "a", lo + "k", at, at + "z"]  # two keys in each half
        for name in names:
            kv.put(name, "0")
        kv.put(at + "q", "before")
    stale = Client(c.endpoints, timeout=20)
    assert stale.get(at + "q") == b"before"  # caches the map with both halves

    acked: dict[str, int] = {}
    reads = [0]
    errors: list[str] = []
    stop = threading.Event()

    def writer(name: str) -> None:
        with c.client(timeout=20) as w:
            n = 0
            while not stop.is_set():
                try:
                    ok = w.cas(name, str(n), str(n + 1))
                except Exception as e:  # recorded, checked below
                    errors.append(f"{name}: {e!r}")
                    return
                if not ok:  # applied twice, or a write lost
                    errors.append(f"{name}: cas {n} -> {n + 1} found {w.get(name)!r}")
                    return
                n += 1
                acked[name] = n

    def reader() -> None:
        with c.client(timeout=20) as r:
            while not stop.is_set():
                for name in names:
                    floor = acked.get(name, 0)  # acknowledged before the read began
                    try:
                        got = int(r.get(name) or b"0")
                    except Exception as e:
                        errors.append(f"read {name}: {e!r}")
                        return
                    if got < floor:  # a strong read sees every write acknowledged before it
                        errors.append(f"read {name}: {got} after {floor} acked")
                    reads[0] += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in names]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) == len(names), 20, "every writer acknowledged")
    out = _merge(c, 3)
    assert out.returncode == 0, out.stderr
    assert f"merged shard {new} into shard 3" in out.stdout, out.stdout
    before = dict(acked)
    wait_for(lambda: all(acked[n] > before[n] + 10 for n in names), 30, "writes after the merge")
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors[:3]
    assert reads[0] > 0

    with c.client(timeout=20) as kv:
        for name, n in acked.items():
            assert kv.get(name) == str(n).encode(), name  # nothing acknowledged was lost
        rows = {r["id"]: r for r in kv.shards()}
        assert sorted(rows) == [1, 2, 3, 4]
        assert (rows[3]["start"], rows[3]["end"]) == (lo, hi)
        assert rows[3]["version"] >= 3
        ordered = sorted(rows.values(), key=lambda r: r["start"])
        assert [r["start"] for r in ordered[1:]] == [r["end"] for r in ordered[:-1]]
    # The stale client routes to the absorbed shard, is told so and follows the map.
    assert stale.get(at + "q") == b"before"
    stale.put(at + "q", "after")
    assert stale.get(at + "q") == b"after"
    stale.close()


@pytest.mark.soak
def test_a_merge_with_a_replica_down_rolls_back(sharded: LocalCluster) -> None:
    """Every source replica must apply the PrepareMerge: with one down the merge waits
    10 s, fences the target and rolls the source back (exit 3 naming the node, the source
    writable again, one version up). Behind --soak (about 40 s a core)."""
    c = sharded
    with c.client(timeout=20) as kv:
        lo = {r["id"]: r for r in kv.shards()}[3]["start"]
        at = lo + "m"
        assert _cli(c, "shard", "split", "3", "--at", at).returncode == 0
        rows = {r["id"]: r for r in kv.shards()}
        new = next(i for i in rows if i not in (1, 2, 3, 4))
        kv.put(at + "x", "1")
    leaders = {
        g["group"]: n["id"]
        for n in c.status()
        if n["reachable"]
        for g in n.get("groups", [])
        if g["role"] == "leader"
    }
    victim = next(v for v in rows[3]["voters"] if v not in (leaders[3], leaders[new], leaders[0]))
    c.kill(victim)
    out = _cli(c, "shard", "merge", "3")
    assert out.returncode == 3, out.stdout
    assert "rolled back" in out.stderr and f"nodes [{victim}]" in out.stderr, out.stderr
    with c.client(timeout=20) as kv:
        kv.put(at + "x", "2")  # the source is writable again
        after = {r["id"]: r for r in kv.shards()}
        assert after[new]["version"] == rows[new]["version"] + 1  # rolled back, one up
        assert after[3]["version"] == rows[3]["version"] + 1  # fenced
        assert (after[3]["end"], after[new]["start"]) == (at, at)
