"""Summaries of py-spy collapsed stacks by node layer."""

from __future__ import annotations

from kvstore.bench.stacks import format_summary, layer_of, short, summarize

LINES = [
    "thread (1): MainThread;run (asyncio/runners.py:10);_iteration (kvstore/node/driver.py:5);"
    "step (kvstore/consensus/raft/core.py:9) 30",
    "thread (1): MainThread;run (asyncio/runners.py:10);_iteration (kvstore/node/driver.py:5) 10",
    "thread (2): kv-writer_0;_worker (concurrent/futures/thread.py:3);"
    "_persist (kvstore/node/driver.py:7);save (kvstore/storage/log.py:4) 50",
    "thread (1): MainThread;something (/x/unknown.py:1) 10",
    "garbage line without a count",
]


def test_each_sample_is_charged_to_its_innermost_known_layer() -> None:
    s = summarize(LINES)
    assert s.samples == 100
    assert s.self_by_layer == {
        "storage (LMDB)": 50,
        "consensus core": 30,
        "node driver": 10,
        "other": 10,
    }
    assert sum(s.self_by_layer.values()) == s.samples


def test_inclusive_counts_a_sample_once_per_layer_on_its_stack() -> None:
    s = summarize(LINES)
    assert s.inclusive_by_layer["node driver"] == 90
    assert s.inclusive_by_layer["event loop"] == 90
    assert s.inclusive_by_layer["consensus core"] == 30


def test_threads_are_counted_and_functions_shortened() -> None:
    s = summarize(LINES)
    assert s.by_thread == {"thread (2): kv-writer_0": 50, "thread (1): MainThread": 50}
    assert s.self_by_function["save (storage/log.py)"] == 50


def test_layer_and_short_names() -> None:
    assert layer_of("f (kvstore/consensus/raft/x.py:1)") == "consensus core"
    assert layer_of("f (/usr/lib/python3.11/json/encoder.py:1)") is None
    assert short("put (/a/site-packages/grpc/aio/_call.py:12)") == "put (grpc/aio/_call.py)"
    assert short("no parens") == "no parens"


def test_format_summary_shows_shares() -> None:
    text = format_summary(summarize(LINES), "leader")
    assert "### leader (100 samples)" in text
    assert "| storage (LMDB) |  50.0% |  50.0% |" in text
