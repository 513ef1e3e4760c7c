"""Client TLS options (issue 14): bad files fail at construction with the file named."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore.client import AsyncClient, Client
from kvstore.security import certs
from kvstore.security.tls import TLSError, TLSFiles


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    certs.init(str(d), 1)
    return d


def test_bad_client_material_is_named(cert_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TLSError, match="--cert and --key together"):
        Client(["127.0.0.1:1"], cert=cert_dir / "client.pem")
    with pytest.raises(TLSError, match="does not belong to --cert"):
        AsyncClient(["127.0.0.1:1"], cert=cert_dir / "client.pem", key=cert_dir / "admin-key.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(TLSError, match=r"junk\.pem: not a PEM file"):
        AsyncClient(["127.0.0.1:1"], cacert=junk)
    with pytest.raises(TLSError, match=r"missing\.pem: cannot read"):
        AsyncClient(["127.0.0.1:1"], cacert=tmp_path / "missing.pem")
    c = AsyncClient(
        ["127.0.0.1:1"],
        cacert=(cert_dir / "ca.pem").read_bytes(),  # PEM bytes work as well as paths
        cert=cert_dir / "client.pem",
        key=cert_dir / "client-key.pem",
    )
    assert c.tls is not None


def test_serve_flag_combinations() -> None:
    assert TLSFiles().problems() == []
    assert any("--peer-cert-file" in p for p in TLSFiles(cert_file="a", key_file="b").problems())
    assert TLSFiles(client_cert_auth=True).problems()
    assert TLSFiles(peer_cert_file="a").problems()


def test_certs_init_keeps_what_exists(cert_dir: Path) -> None:
    before = (cert_dir / "node-1.pem").read_bytes()
    made = certs.init(str(cert_dir), 2)
    assert sorted(Path(p).name for p in made) == ["node-2-key.pem", "node-2.pem"]
    assert (cert_dir / "node-1.pem").read_bytes() == before
    assert (cert_dir / "ca-key.pem").stat().st_mode & 0o077 == 0
