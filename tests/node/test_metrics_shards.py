"""Per-shard metrics have bounded cardinality (kvstore/node/metrics.py): series of their
own for at most MAX_SHARD_SERIES hosted shards, the rest under group="other" (gauges not
exported), and a shard that leaves the node takes its series with it."""

from __future__ import annotations

from prometheus_client import generate_latest

from kvstore.node.metrics import MAX_SHARD_SERIES, OTHER, NodeMetrics


def _groups(m: NodeMetrics, name: str) -> set[str]:
    out = set()
    for line in generate_latest(m.registry).decode().splitlines():
        if line.startswith(name + "{") and 'group="' in line:
            out.add(line.split('group="', 1)[1].split('"', 1)[0])
    return out


def test_series_per_shard_are_capped_and_removed_when_a_shard_leaves() -> None:
    m = NodeMetrics()
    hosted = range(MAX_SHARD_SERIES + 10)
    for g in hosted:
        m.host_shard(g)
        m.shard_gauge(m.applied, g).set(g)
        m.sent.labels(m.shard(g)).inc()
    m.sent.labels(m.shard(10**6)).inc()  # a group this node does not host
    capped = {str(g) for g in range(MAX_SHARD_SERIES)}
    assert _groups(m, "kvstore_applied_index") == capped
    assert _groups(m, "kvstore_messages_sent_total") == capped | {OTHER}
    m.forget_shard(3)
    assert "3" not in _groups(m, "kvstore_applied_index")
    assert "3" not in _groups(m, "kvstore_messages_sent_total")
    m.host_shard(500)  # the freed slot goes to the next shard the node hosts
    m.shard_gauge(m.applied, 500).set(1)
    assert "500" in _groups(m, "kvstore_applied_index")
    assert len(_groups(m, "kvstore_applied_index")) == MAX_SHARD_SERIES
