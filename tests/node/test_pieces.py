"""Small node pieces: limits, phi-accrual detector, peers flag, identity check, error table."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kvstore.client.errors import (
    DeadlineExceeded,
    InvalidArgument,
    KVError,
    NotLeader,
    ResourceExhausted,
    Unavailable,
    from_code,
)
from kvstore.node.errors import InvalidOp
from kvstore.node.failure import PhiAccrual
from kvstore.node.limits import Limits
from kvstore.server.process import ServeOptions, StartupError, check_identity, parse_peers
from kvstore.storage import NodeStorage


def test_limits_name_the_limit() -> None:
    lim = Limits(max_key_bytes=4, max_value_bytes=8, max_batch_ops=2, max_request_bytes=100)
    lim.check_key(b"abcd")
    lim.check_value(b"12345678")
    lim.check_batch(2, 100)
    for call, name in (
        (lambda: lim.check_key(b"abcde"), "max_key_bytes=4"),
        (lambda: lim.check_key(b""), "empty"),
        (lambda: lim.check_value(b"123456789"), "max_value_bytes=8"),
        (lambda: lim.check_batch(3, 10), "max_batch_ops=2"),
        (lambda: lim.check_batch(1, 101), "max_request_bytes=100"),
    ):
        with pytest.raises(InvalidOp, match=name) as e:
            call()
        assert e.value.definite and e.value.code == 3
    assert lim.scan_limit(0) == lim.max_scan_limit
    assert lim.scan_limit(5) == 5
    assert lim.scan_limit(10**9) == lim.max_scan_limit


def test_phi_grows_with_silence() -> None:
    d = PhiAccrual()
    assert d.state(0.0) == "unknown" and math.isinf(d.phi(0.0))
    for i in range(20):
        d.heartbeat(i * 0.1)
    last = 1.9
    assert d.phi(last) == 0.0
    assert d.state(last + 0.1) == "alive"
    assert d.phi(last + 0.5) < d.phi(last + 1.0) < d.phi(last + 5.0)
    assert d.state(last + 1.5) == "suspect"
    assert d.state(last + 5.0) == "dead"


def test_parse_peers() -> None:
    assert parse_peers("1=a:1, 2=b:2,") == {1: "a:1", 2: "b:2"}
    assert parse_peers("") == {}
    for bad in ("1", "x=a:1", "1=nohostport"):
        with pytest.raises(ValueError, match="ID=HOST:PORT"):
            parse_peers(bad)


def _opts(tmp: Path, **kw: object) -> ServeOptions:
    base: dict[str, object] = {"id": 1, "listen": "127.0.0.1:0", "peers": {}, "data_dir": str(tmp)}
    base.update(kw)
    return ServeOptions(**base)  # type: ignore[arg-type]


def test_identity_is_recorded_then_enforced(tmp_path: Path) -> None:
    st = NodeStorage(str(tmp_path), map_size=16 << 20)
    try:
        assert check_identity(st, _opts(tmp_path)) is True
        with st.write() as w:
            w.set_meta(b"cluster_id", b"kvstore")
            w.set_meta(b"node_id", b"1")
            w.set_meta(b"consensus", b"raft")
        assert check_identity(st, _opts(tmp_path)) is False
        with pytest.raises(StartupError, match=r"node_id=1.*node_id=2"):
            check_identity(st, _opts(tmp_path, id=2))
        with pytest.raises(StartupError, match=r"cluster_id=kvstore.*cluster_id=other"):
            check_identity(st, _opts(tmp_path, cluster_id="other"))
        with pytest.raises(StartupError, match=r"consensus=raft.*consensus=paxos"):
            check_identity(st, _opts(tmp_path, consensus="paxos"))
    finally:
        st.close()


@pytest.mark.parametrize(
    ("code", "cls", "definite"),
    [
        (9, NotLeader, True),
        (14, Unavailable, False),
        (4, DeadlineExceeded, False),
        (3, InvalidArgument, True),
        (8, ResourceExhausted, True),
        (2, KVError, False),
    ],
)
def test_error_table(code: int, cls: type[KVError], definite: bool) -> None:
    e = from_code(code, "m", definite=definite, leader_id=2, leader_endpoint="h:2")
    assert type(e) is cls and e.definite is definite and e.message == "m"
    if isinstance(e, NotLeader):
        assert (e.leader_id, e.leader_endpoint) == (2, "h:2")


def test_a_refused_connection_fails_writes_as_definite() -> None:
    import asyncio

    from kvstore.client import AsyncClient, DeadlineExceeded

    async def main() -> None:
        async with AsyncClient(["127.0.0.1:1"], timeout=0.5) as c:
            with pytest.raises(DeadlineExceeded) as e:
                await c.put("k", "v")
            assert e.value.definite, "nothing reached a server: the write certainly failed"

    asyncio.run(main())


def test_leaders_of_both_cores_send_replication_before_their_own_fsync() -> None:
    """may_send_before_persist (proved for both cores by tests/sim/driver_model.py): a
    leader's APPEND / ACCEPT and heartbeats leave early; a promise or vote, a new ballot
    or term, or a change of role waits for the persist."""
    from kvstore.consensus.types import HardState, Message, MessageType, Ready, Role, SoftState
    from kvstore.node.persist import may_send_before_persist

    mt = MessageType

    def rd(*types: MessageType, hs: HardState | None = None, soft: Role | None = None) -> Ready:
        msgs = tuple(Message(type=t, group=1, from_=1, to=2, term=65537) for t in types)
        return Ready(
            messages=msgs,
            hard_state=hs,
            soft_state=None if soft is None else SoftState(leader=1, role=soft),
        )

    commit = HardState(term=65537, commit=9)
    assert may_send_before_persist(Role.LEADER, 65537, 0, rd(mt.ACCEPT, mt.PAXOS_HEARTBEAT))
    assert may_send_before_persist(Role.LEADER, 65537, 0, rd(mt.ACCEPT, hs=commit))
    assert may_send_before_persist(Role.LEADER, 3, 1, rd(mt.APPEND, mt.HEARTBEAT))
    assert not may_send_before_persist(Role.LEADER, 65537, 0, rd(mt.ACCEPT, mt.PROMISE))
    assert not may_send_before_persist(Role.LEADER, 1, 0, rd(mt.ACCEPT, hs=commit))
    assert not may_send_before_persist(Role.FOLLOWER, 65537, 0, rd(mt.ACCEPT))
    assert not may_send_before_persist(Role.LEADER, 65537, 0, rd(mt.ACCEPT, soft=Role.FOLLOWER))
