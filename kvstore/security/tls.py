"""TLS material for a node's port, its links to peers, and clients.

Rules:
- Every file is checked when it is loaded, not at the first handshake: unreadable, not
  PEM, a key that does not belong to its certificate, or a certificate outside its
  validity window is a TLSError naming the file and what is wrong.
- One port serves clients and peers, so with TLS on every connection must present a
  certificate that the client CA or the peer CA signed (mutual TLS for everyone; what a
  certificate may do is auth.py's business).
- A node dials a peer expecting that node's certificate (the name ``node-<id>``), not
  whatever certificate the address happens to present.
- ``cryptography`` is imported only when TLS is used: plaintext clients and nodes run
  without it.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import grpc.aio

if TYPE_CHECKING:
    from cryptography import x509

Options = Sequence[tuple[str, int | str]]


class TLSError(ValueError):
    """A certificate, key or CA file cannot be used (the message says which and why)."""


def node_name(node_id: int) -> str:
    """The name a node's certificate carries (SAN DNS and CN) and peers expect."""
    return f"node-{node_id}"


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TLSError(f"{what} {path}: cannot read: {e.strerror or e}") from None
    if b"-----BEGIN " not in data:
        raise TLSError(f"{what} {path}: not a PEM file")
    return data


def _certs(path: str, data: bytes, what: str) -> list[x509.Certificate]:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSError(f"{what} {path}: not a PEM certificate ({e})") from None
    now = datetime.datetime.now(datetime.UTC)
    for c in certs:
        subject = c.subject.rfc4514_string()
        if c.not_valid_after_utc < now:
            raise TLSError(
                f"{what} {path}: certificate {subject!r} expired on "
                f"{c.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            )
        if c.not_valid_before_utc > now:
            raise TLSError(
                f"{what} {path}: certificate {subject!r} is not valid before "
                f"{c.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
            )
    return certs


def load_ca(path: str, what: str = "CA file") -> tuple[bytes, list[x509.Certificate]]:
    data = _read(path, what)
    return data, _certs(path, data, what)


def load_pair(cert_path: str, key_path: str, what: str) -> tuple[bytes, bytes, x509.Certificate]:
    """A certificate and its private key, checked to belong together."""
    cert_data = _read(cert_path, f"{what} certificate")
    cert = _certs(cert_path, cert_data, f"{what} certificate")[0]
    key_data = _read(key_path, f"{what} key")
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError) as e:
        raise TLSError(f"{what} key {key_path}: not an unencrypted PEM private key ({e})") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise TLSError(f"{what} key {key_path} does not belong to certificate {cert_path}")
    return cert_data, key_data, cert


def cert_names(cert: x509.Certificate) -> set[str]:
    """The DNS names and common names a certificate carries."""
    from cryptography import x509

    names = {str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names
    return names | set(san.get_values_for_type(x509.DNSName))


@dataclass(frozen=True, slots=True)
class ChannelTLS:
    """What a dialer presents and trusts: a root CA bundle, and a certificate and key
    (client authentication)."""

    root: bytes | None
    cert: bytes | None = None
    key: bytes | None = None
    _creds: list[grpc.ChannelCredentials] = field(default_factory=list, compare=False)

    def credentials(self) -> grpc.ChannelCredentials:
        if not self._creds:
            self._creds.append(
                grpc.ssl_channel_credentials(
                    root_certificates=self.root, private_key=self.key, certificate_chain=self.cert
                )
            )
        return self._creds[0]


def open_channel(
    endpoint: str, options: Options, tls: ChannelTLS | None, name: str | None = None
) -> grpc.aio.Channel:
    """A channel to ``endpoint``: plaintext without ``tls``; with it, the server must
    prove ``name`` (default: the endpoint's host) with a certificate ``tls.root`` signed."""
    if tls is None:
        return grpc.aio.insecure_channel(endpoint, options=options)
    opts = list(options)
    if name is not None:
        opts.append(("grpc.ssl_target_name_override", name))
    return grpc.aio.secure_channel(endpoint, tls.credentials(), options=opts)


PathOrPem = str | bytes | os.PathLike[str] | None


def _material(value: PathOrPem, what: str) -> tuple[str, bytes] | None:
    """A path is read; bytes are PEM data as is."""
    if value is None or value == "":
        return None
    if isinstance(value, bytes):
        return "<bytes>", value
    path = os.fspath(value)
    return path, _read(path, what)


def client_tls(
    cacert: PathOrPem = None, cert: PathOrPem = None, key: PathOrPem = None
) -> ChannelTLS | None:
    """etcdctl's --cacert/--cert/--key: None when none is given (plaintext)."""
    ca = _material(cacert, "--cacert")
    crt = _material(cert, "--cert")
    k = _material(key, "--key")
    if (crt is None) != (k is None):
        raise TLSError("give --cert and --key together (the client certificate and its key)")
    if ca is None and crt is None:
        return None
    if ca is not None:
        _certs(ca[0], ca[1], "--cacert")
    if crt is not None and k is not None:
        cert_path, cert_data = crt
        certs = _certs(cert_path, cert_data, "--cert")
        from cryptography.hazmat.primitives import serialization

        try:
            private = serialization.load_pem_private_key(k[1], password=None)
        except (ValueError, TypeError) as e:
            raise TLSError(f"--key {k[0]}: not an unencrypted PEM private key ({e})") from None
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if private.public_key().public_bytes(*spki) != certs[0].public_key().public_bytes(*spki):
            raise TLSError(f"--key {k[0]} does not belong to --cert {cert_path}")
    return ChannelTLS(
        root=ca[1] if ca else None, cert=crt[1] if crt else None, key=k[1] if k else None
    )


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """A node's TLS: what its port serves and trusts, and how it dials its peers."""

    cert: bytes
    key: bytes
    trusted: bytes
    """Client CA and peer CA together: whom the port lets connect."""
    peer_cas: tuple[x509.Certificate, ...]
    """Only a certificate one of these issued can name a node (auth.py)."""
    peer: ChannelTLS

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.trusted, require_client_auth=True
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSFiles:
    """The etcd flags of ``kvstore serve``; all empty: no TLS."""

    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    peer_cert_file: str = ""
    peer_key_file: str = ""
    peer_trusted_ca_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file or self.peer_cert_file)

    def problems(self) -> list[str]:
        """What is wrong with this combination of flags (empty: fine)."""
        out = []
        if bool(self.cert_file) != bool(self.key_file):
            out.append("give --cert-file and --key-file together")
        if bool(self.peer_cert_file) != bool(self.peer_key_file):
            out.append("give --peer-cert-file and --peer-key-file together")
        if (self.trusted_ca_file or self.client_cert_auth) and not self.enabled:
            out.append("--trusted-ca-file and --client-cert-auth need --cert-file/--key-file")
        if self.enabled and not (self.peer_cert_file and self.peer_trusted_ca_file):
            out.append(
                "TLS needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file: "
                "peers share the client port, and without peer certificates any client "
                "could speak for a node"
            )
        return out

    def load(self) -> ServerTLS | None:
        if not self.enabled:
            return None
        peer_ca_data, peer_cas = load_ca(self.peer_trusted_ca_file, "--peer-trusted-ca-file")
        peer_cert, peer_key, _ = load_pair(self.peer_cert_file, self.peer_key_file, "peer")
        if self.cert_file:
            cert, key, _ = load_pair(self.cert_file, self.key_file, "server")
        else:  # only peer TLS: the node's certificate serves the port
            cert, key = peer_cert, peer_key
        trusted = peer_ca_data
        if self.trusted_ca_file:
            client_ca, _ = load_ca(self.trusted_ca_file, "--trusted-ca-file")
            if client_ca != peer_ca_data:
                trusted = client_ca.rstrip(b"\n") + b"\n" + peer_ca_data
        return ServerTLS(
            cert=cert,
            key=key,
            trusted=trusted,
            peer_cas=tuple(peer_cas),
            peer=ChannelTLS(root=peer_ca_data, cert=peer_cert, key=peer_key),
        )
