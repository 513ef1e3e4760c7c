"""TLS and access control with real processes (issue 14): a mutual-TLS cluster, clients
by role, plaintext and wrongly certified callers refused, forged peer traffic refused."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kvstore._pb import peer_pb2, peer_pb2_grpc
from kvstore.client import Client, KVError, PermissionDenied
from kvstore.security import certs

from .harness import LocalCluster, wait_for

pytestmark = pytest.mark.integration


class TLSCluster(LocalCluster):
    """LocalCluster whose nodes serve mutual TLS with certificates from ``certs.init``."""

    def __init__(self, root: Path, cert_dir: Path, **kw: Any) -> None:
        super().__init__(root, **kw)
        self.cert_dir = cert_dir
        self.node_flags: dict[int, list[str]] = {}

    def argv(self, i: int) -> list[str]:
        flags = self.node_flags.get(i) or certs.serve_flags(str(self.cert_dir), i)
        return [*super().argv(i), *flags]

    def tls_client(self, role: str = "admin", timeout: float = 10.0) -> Client:
        d = self.cert_dir
        return Client(
            self.endpoints,
            timeout=timeout,
            cacert=d / "ca.pem",
            cert=d / f"{role}.pem",
            key=d / f"{role}-key.pem",
        )

    def client(self, timeout: float = 10.0, only: list[int] | None = None) -> Client:
        return self.tls_client(timeout=timeout)

    def status(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        with self.tls_client(timeout=timeout) as c:
            return c.status()


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSCluster]:
    root = tmp_path_factory.mktemp("tls")
    certs.init(str(root / "certs"), 3)
    c = TLSCluster(root, root / "certs", metrics=True)
    try:
        c.start()
        c.wait_leader()
        yield c
    finally:
        c.close()


def test_roles_on_a_tls_cluster(tls_cluster: TLSCluster) -> None:
    with tls_cluster.tls_client("client") as c:
        c.put("k", "v")  # reads and writes travel over TLS, replicated over mutual TLS
        assert c.get("k") == b"v"
        with pytest.raises(PermissionDenied, match=r"needs the admin role.*OU=admin"):
            c.transfer_leader(2)
        with pytest.raises(PermissionDenied, match="AddLearner needs the admin role"):
            c.add_learner(9, "127.0.0.1:1")
        assert c.status()[0]["reachable"]  # status is not an admin call
    with tls_cluster.tls_client("admin") as c:
        assert c.transfer_leader(2) == 2
        assert c.members()


def test_plaintext_and_certless_clients_are_refused(tls_cluster: TLSCluster) -> None:
    with (
        Client(tls_cluster.endpoints, timeout=1.0) as c,
        pytest.raises(KVError) as plain,
    ):
        c.get("k")
    d = tls_cluster.cert_dir
    with (
        Client(tls_cluster.endpoints, timeout=1.0, cacert=d / "ca.pem") as c,
        pytest.raises(KVError) as certless,
    ):
        c.get("k")
    for refused in (plain.value, certless.value):  # no answer at all on a loaded machine
        assert "UNAVAILABLE" in refused.message or "no answer" in refused.message


def test_a_client_of_another_ca_is_refused(tls_cluster: TLSCluster, tmp_path: Path) -> None:
    other = tmp_path / "other"
    certs.init(str(other), 1)
    for cacert, role_dir in ((other, other), (tls_cluster.cert_dir, other)):
        # The nodes' certificates fail the client's check, or the client's fails theirs.
        with (
            Client(
                tls_cluster.endpoints,
                timeout=1.0,
                cacert=cacert / "ca.pem",
                cert=role_dir / "admin.pem",
                key=role_dir / "admin-key.pem",
            ) as c,
            pytest.raises(KVError),  # UNAVAILABLE, or no answer at all on a loaded machine
        ):
            c.get("k")


def test_a_client_certificate_cannot_speak_for_a_node(tls_cluster: TLSCluster) -> None:
    d = tls_cluster.cert_dir
    ca = (d / "ca.pem").read_bytes()

    def stream(stem: str, sender: int) -> list[peer_pb2.PeerReply]:
        creds = grpc.ssl_channel_credentials(
            ca, (d / f"{stem}-key.pem").read_bytes(), (d / f"{stem}.pem").read_bytes()
        )
        batch = peer_pb2.PeerBatch(cluster_id="kvstore", to=1, **{"from": sender})
        with grpc.secure_channel(tls_cluster.endpoint(1), creds) as ch:
            return list(peer_pb2_grpc.PeerStub(ch).Stream(iter([batch]), timeout=5))

    for stem in ("client", "admin"):
        with pytest.raises(grpc.RpcError) as e:
            stream(stem, 2)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "for nodes only" in (e.value.details() or "")
    # A node's certificate speaks for that node only.
    replies = stream("node-3", 2)
    assert "sender 2 is not the node this certificate names (node 3)" in replies[0].error
    assert 'kvstore_peer_batches_rejected_total{reason="peer_identity"} 1.0' in (
        tls_cluster.metrics(1)
    )
    assert stream("node-2", 2) == []  # the genuine article passes


def test_a_node_with_a_wrong_certificate_is_refused(tmp_path: Path) -> None:
    """Node 3 presents a certificate from another CA, then node 2's certificate: either way
    it never joins the cluster's traffic, and the two others carry on."""
    certs.init(str(tmp_path / "certs"), 3)
    certs.init(str(tmp_path / "other"), 3)
    c = TLSCluster(tmp_path, tmp_path / "certs", nodes=3)
    c.node_flags[3] = certs.serve_flags(str(tmp_path / "other"), 3)  # another CA's
    try:
        c.start()
        c.wait_leader()
        with c.tls_client() as cl:
            cl.put("a", "1")
        st = {n["id"]: n for n in c.status() if n["reachable"]}
        assert 3 not in st  # no client with the real CA can even reach it
        assert "peer_connected" not in c.log(3).split("node_started")[-1]
        c.stop(3)
        # Node 3 with node 2's certificate: its peers expect node-3 on that address.
        c.node_flags[3] = certs.serve_flags(str(tmp_path / "certs"), 2)
        c.start(3)
        wait_for(lambda: "peer_batch_rejected" in c.log(1) + c.log(2), 20, "a rejection")
        assert "reason=peer_identity" in c.log(1) + c.log(2)
        with c.tls_client() as cl:
            assert cl.get("a") == b"1"
    finally:
        c.close()


def _serve(tmp_path: Path, flags: list[str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "kvstore.cli", "serve", "--id", "1", "--listen"]
    argv += ["127.0.0.1:0", "--data-dir", str(tmp_path / "d"), *flags]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_bad_certificates_stop_the_node_with_a_clear_error(tmp_path: Path) -> None:
    import datetime

    from cryptography.hazmat.primitives import serialization

    d = tmp_path / "certs"
    certs.init(str(d), 1)
    key = certs.new_key()
    ca_cert = certs.x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    ca_key: Any = serialization.load_pem_private_key((d / "ca-key.pem").read_bytes(), password=None)
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    expired = certs.make_cert(
        certs._name("node-1"), key, ca_cert, ca_key, server=True, not_before=old, days=1
    )
    (tmp_path / "expired.pem").write_bytes(certs._pem(expired))
    (tmp_path / "expired-key.pem").write_bytes(certs._key_pem(key))
    flags = certs.serve_flags(str(d), 1)
    bad = [*flags[:6], "--peer-cert-file", str(tmp_path / "expired.pem")]
    bad += ["--peer-key-file", str(tmp_path / "expired-key.pem"), *flags[-2:]]
    r = _serve(tmp_path, bad)
    assert r.returncode == 3
    assert "expired on" in r.stderr and "expired.pem" in r.stderr
    mismatched = [*flags[:2], "--key-file", str(d / "client-key.pem"), *flags[4:]]
    r = _serve(tmp_path, mismatched)
    assert r.returncode == 3 and "does not belong to certificate" in r.stderr
    r = _serve(tmp_path, flags[:4])  # client TLS without peer TLS on a shared port
    assert r.returncode == 2 and "--peer-cert-file" in r.stderr


def test_a_sharded_cluster_over_tls(tmp_path: Path) -> None:
    """Node-to-node admin calls (meta group, shard reports, splits) use the nodes'
    certificates: a read/write client may not split, an admin may."""
    certs.init(str(tmp_path / "certs"), 3)
    c = TLSCluster(tmp_path, tmp_path / "certs", extra=["--shards", "2"])
    try:
        c.start()
        c.wait_leader()
        with c.tls_client("client", timeout=15) as kv:
            for k in ("a", "m", "z"):
                kv.put(k, k)
            assert [k for k, _ in kv.scan()] == [b"a", b"m", b"z"]
            with pytest.raises(PermissionDenied, match="SplitShard needs the admin role"):
                kv.split_shard(2, "x")
        with c.tls_client("admin", timeout=15) as kv:
            wait_for(lambda: kv.split_shard(2, "x"), 30, "a split over TLS")
            assert len(kv.shards()) == 3
            assert kv.get("z") == b"z"
    finally:
        c.close()
