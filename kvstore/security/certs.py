"""`kvstore certs init`: a development CA and the certificates a TLS cluster needs.

Rule: files that exist are kept (a rerun adds what is missing, never replaces a key a
running cluster uses); keys are written readable by their owner only.
Made with the ``cryptography`` library: ECDSA P-256 keys, SHA-256 signatures.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kvstore.security.auth import ADMIN_OU
from kvstore.security.tls import node_name

CA_DAYS = 3650
LEAF_DAYS = 825
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")

Key = ec.EllipticCurvePrivateKey


def _name(cn: str, ou: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kvstore")]
    if ou is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _write(path: str, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _sans(hosts: Sequence[str], extra: Sequence[str] = ()) -> x509.SubjectAlternativeName:
    out: list[x509.GeneralName] = [x509.DNSName(n) for n in extra]
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(out)


def make_cert(
    subject: x509.Name,
    key: Key,
    issuer: x509.Certificate | None,
    issuer_key: Key,
    *,
    ca: bool = False,
    sans: x509.SubjectAlternativeName | None = None,
    server: bool = False,
    not_before: datetime.datetime | None = None,
    days: int = LEAF_DAYS,
) -> x509.Certificate:
    """One certificate (self-signed when ``issuer`` is None). Tests use ``not_before`` and
    ``days`` to make expired ones."""
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans is not None:
        b = b.add_extension(sans, critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _load_ca(directory: str) -> tuple[x509.Certificate, Key]:
    ca_path = os.path.join(directory, "ca.pem")
    key_path = os.path.join(directory, "ca-key.pem")
    if os.path.exists(ca_path) and os.path.exists(key_path):
        with open(ca_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: not a key this command made")
        return cert, key
    if os.path.exists(ca_path) or os.path.exists(key_path):
        raise ValueError(f"{directory} has only one of ca.pem and ca-key.pem")
    key = new_key()
    cert = make_cert(_name("kvstore development CA"), key, None, key, ca=True, days=CA_DAYS)
    _write(key_path, _key_pem(key), private=True)
    _write(ca_path, _pem(cert))
    return cert, key


def init(directory: str, nodes: int, hosts: Sequence[str] = ()) -> list[str]:
    """Make what is missing under ``directory``; returns the files written."""
    os.makedirs(directory, exist_ok=True)
    made: list[str] = []
    before = set(os.listdir(directory))
    ca, ca_key = _load_ca(directory)
    all_hosts = list(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))

    def leaf(stem: str, subject: x509.Name, **kw: object) -> None:
        cert_path = os.path.join(directory, f"{stem}.pem")
        key_path = os.path.join(directory, f"{stem}-key.pem")
        if os.path.exists(cert_path) and os.path.exists(key_path):
            return
        key = new_key()
        cert = make_cert(subject, key, ca, ca_key, **kw)  # type: ignore[arg-type]
        for p in (cert_path, key_path):
            if os.path.exists(p):
                os.unlink(p)  # half of a pair: remake both
        _write(key_path, _key_pem(key), private=True)
        _write(cert_path, _pem(cert))

    for i in range(1, nodes + 1):
        name = node_name(i)
        leaf(name, _name(name, "node"), sans=_sans(all_hosts, [name]), server=True)
    leaf("client", _name("client", "readwrite"))
    leaf("admin", _name("admin", ADMIN_OU))
    made = sorted(set(os.listdir(directory)) - before)
    return [os.path.join(directory, n) for n in made]


def serve_flags(directory: str, node_id: int | str) -> list[str]:
    """The `kvstore serve` TLS flags for node ``node_id`` with certificates from init."""
    d = directory
    cert = os.path.join(d, f"node-{node_id}.pem")
    key = os.path.join(d, f"node-{node_id}-key.pem")
    ca = os.path.join(d, "ca.pem")
    return [
        "--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth",
        "--peer-cert-file", cert, "--peer-key-file", key, "--peer-trusted-ca-file", ca,
    ]  # fmt: skip


def client_flags(directory: str, role: str = "admin") -> list[str]:
    d = directory
    return [
        "--cacert", os.path.join(d, "ca.pem"),
        "--cert", os.path.join(d, f"{role}.pem"),
        "--key", os.path.join(d, f"{role}-key.pem"),
    ]  # fmt: skip
