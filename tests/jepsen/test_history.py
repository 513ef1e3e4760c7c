"""History pairing, the jsonl round trip and the format readers."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest

from kvstore.jepsen.formats import load, parse_jepsen_kv, parse_jepsen_log
from kvstore.jepsen.history import NEMESIS, Event, HistoryError, pair, parse_jsonl, write_jsonl


def test_pair_matches_completions_and_drops_fails() -> None:
    events = [
        Event(type="invoke", process=1, f="write", key="a", value=1, time=0.0),
        Event(type="invoke", process=2, f="write", key="a", value=2, time=0.1),
        Event(type="invoke", process=NEMESIS, f="start", value="partition", time=0.15),
        Event(type="ok", process=1, f="write", key="a", value=1, time=0.2),
        Event(type="fail", process=2, f="write", key="a", value=2, time=0.3),
        Event(type="invoke", process=3, f="cas", key="a", value=(1, 3), time=0.4),
        Event(type="info", process=3, f="cas", key="a", value=(1, 3), time=0.5),
        Event(type="invoke", process=4, f="read", key="a", time=0.6),
    ]
    ops = pair(events)
    assert [(op.process, op.f, op.unknown) for op in ops] == [
        (1, "write", False),
        (3, "cas", True),
        (4, "read", True),
    ]
    assert [op.id for op in ops] == [0, 1, 2]
    assert ops[0].ret == 0.2 and ops[0].output == 1
    assert math.isinf(ops[1].ret) and ops[1].output is None


def test_pair_rejects_broken_discipline() -> None:
    with pytest.raises(HistoryError, match="without an invoke"):
        pair([Event(type="ok", process=1, f="read")])
    with pytest.raises(HistoryError, match="in flight"):
        pair([Event(type="invoke", process=1, f="read"), Event(type="invoke", process=1, f="read")])


def test_jsonl_round_trip_keeps_tuples() -> None:
    events = [
        Event(type="invoke", process=0, f="cas", key="k", value=(1, 2), time=1.5),
        Event(type="ok", process=0, f="cas", key="k", value=True, time=1.75, error=None),
        Event(type="info", process=1, f="write", key="k", value=3, time=2.0, error="timeout"),
    ]
    buf = io.StringIO()
    write_jsonl(events, buf)
    assert parse_jsonl(buf.getvalue().splitlines()) == events


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not JSON"),
        ('{"type": "begin", "process": 0, "f": "read"}', "'type'"),
        ('{"type": "ok", "process": "x", "f": "read"}', "'process'"),
        ('{"type": "ok", "process": 1, "f": 3}', "'f'"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_jsonl_errors_name_the_line(line: str, message: str) -> None:
    with pytest.raises(HistoryError, match=message) as info:
        parse_jsonl(["", line], "h.jsonl")
    assert "h.jsonl:2" in str(info.value)


def test_jepsen_log_reader() -> None:
    lines = [
        "INFO  jepsen.util - 0\t:invoke\t:cas\t[1 4]",
        "INFO  jepsen.util - 1\t:invoke\t:read\tnil",
        "INFO  jepsen.util - 0\t:fail\t:cas\t[1 4]",
        "INFO  jepsen.util - 1\t:ok\t:read\tnil",
        "INFO  jepsen.util - 2\t:invoke\t:write\t3",
        "INFO  jepsen.util - 2\t:info\t:write\t:timed-out",
    ]
    ops = pair(parse_jepsen_log(lines, "x"))
    assert [(op.f, op.input, op.output, op.unknown) for op in ops] == [
        ("cas", (1, 4), False, False),
        ("read", None, None, False),
        ("write", 3, None, True),
    ]
    with pytest.raises(HistoryError, match="x:1"):
        parse_jepsen_log(["INFO  jepsen.util - 0\t:invoke\t:cas\t7"], "x")


def test_jepsen_kv_reader_reads_nil_get_as_empty_string() -> None:
    lines = [
        '{:process 0, :type :invoke, :f :get, :key "3", :value nil}',
        '{:process 0, :type :ok, :f :get, :key "3", :value nil}',
        '{:process 1, :type :invoke, :f :append, :key "3", :value "x 1 0 y"}',
        '{:process 1, :type :ok, :f :append, :key "3", :value "x 1 0 y"}',
    ]
    ops = pair(parse_jepsen_kv(lines, "kv"))
    assert [(op.f, op.key, op.input, op.output) for op in ops] == [
        ("get", "3", None, ""),
        ("append", "3", "x 1 0 y", "x 1 0 y"),
    ]


def test_load_sniffs_formats_and_rejects_junk(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("INFO  jepsen.util - 0\t:invoke\t:read\tnil\n")
    assert load(log).format == "jepsen-log"
    kv = tmp_path / "b.txt"
    kv.write_text('{:process 0, :type :invoke, :f :get, :key "1", :value nil}\n')
    assert load(kv).model.name == "string-kv"
    js = tmp_path / "c.jsonl"
    js.write_text('{"type":"invoke","process":0,"f":"append","key":"k","value":1,"time":0}\n')
    assert load(js).model.name == "list-append"
    junk = tmp_path / "d"
    junk.write_text("hello\n")
    with pytest.raises(HistoryError, match="format"):
        load(junk)
    empty = tmp_path / "e"
    empty.write_text("\n")
    with pytest.raises(HistoryError, match="empty"):
        load(empty)
    binary = tmp_path / "f"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(HistoryError, match="UTF-8"):
        load(binary)
