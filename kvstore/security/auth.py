"""Who may call what, from the client certificate the port verified.

Rules (in force whenever the port runs TLS, which always verifies client certificates):
- Every certificate the port accepted may read and write keys (role ``readwrite``).
- Calls that change the cluster (every admin call but Status, ShardMap and NodeList:
  membership, leadership, shard splits and moves, the meta group's proposals, backups) need
  role ``admin``: a certificate whose subject has
  ``OU=admin``, or a node's certificate. Others get PERMISSION_DENIED naming the role.
- The peer service needs a node's certificate: one that names ``node-<id>`` (SAN DNS or
  CN) and that a peer CA issued, so a client certificate (even one signed by the same
  CA, whatever its name claims when a separate peer CA is used) cannot speak for a
  node; the peer service then accepts only messages whose sender is that node id.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from kvstore.security.tls import cert_names

ADMIN_PREFIX = "/kvstore.v1.Admin/"
OPEN_ADMIN_METHODS = frozenset(f"{ADMIN_PREFIX}{m}" for m in ("Status", "ShardMap", "NodeList"))
"""The admin service's read-only calls (clients route with the shard map); every other
admin call, including any added later, needs the admin role."""
PEER_PREFIX = "/kvstore.v1.Peer/"
ADMIN_OU = "admin"
_NODE_NAME = re.compile(r"node-([1-9][0-9]{0,18})")
_CACHE_MAX = 1024


@dataclass(frozen=True, slots=True)
class Identity:
    subject: str
    admin: bool
    node: int | None
    """The node this certificate speaks for (a peer CA issued it), else None."""

    @property
    def role(self) -> str:
        return "node" if self.node is not None else "admin" if self.admin else "readwrite"


class Authority:
    """Maps the verified client certificate of a call to an Identity (cached per cert)."""

    def __init__(self, peer_cas: tuple[x509.Certificate, ...]) -> None:
        self.peer_cas = peer_cas
        self._cache: dict[bytes, Identity] = {}

    def identity(self, context: Any) -> Identity | None:
        """None when the call came without a verified certificate (plaintext port)."""
        pems = context.auth_context().get("x509_pem_cert") or []
        if not pems:
            return None
        pem: bytes = pems[0]
        ident = self._cache.get(pem)
        if ident is None:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            ident = self._cache[pem] = self._identify(x509.load_pem_x509_certificate(pem))
        return ident

    def _identify(self, cert: x509.Certificate) -> Identity:
        ous = {
            str(a.value)
            for a in cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)
        }
        node = None
        ids = {int(m.group(1)) for n in cert_names(cert) if (m := _NODE_NAME.fullmatch(n))}
        if len(ids) == 1 and self._issued_by_peer_ca(cert):
            node = ids.pop()
        return Identity(cert.subject.rfc4514_string(), ADMIN_OU in ous or node is not None, node)

    def _issued_by_peer_ca(self, cert: x509.Certificate) -> bool:
        for ca in self.peer_cas:
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
        return False

    def node_of(self, context: Any) -> int | None:
        ident = self.identity(context)
        return ident.node if ident is not None else None


def needs_admin(method: str) -> bool:
    return method.startswith(ADMIN_PREFIX) and method not in OPEN_ADMIN_METHODS


def _denial(method: str, ident: Identity | None) -> str | None:
    """Why ``ident`` may not call ``method`` (None: it may)."""
    who = (
        "a call without a client certificate"
        if ident is None
        else f"certificate {ident.subject!r} (role {ident.role})"
    )
    if method.startswith(PEER_PREFIX):
        if ident is None or ident.node is None:
            return (
                f"{method} is for nodes only: it needs a certificate naming node-<id> "
                f"issued by the peer CA; {who} is not one"
            )
    elif needs_admin(method) and (ident is None or not ident.admin):
        return f"{method} needs the admin role (a certificate with OU={ADMIN_OU}); {who} lacks it"
    return None


class AccessInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses admin and peer calls to certificates without the role (PERMISSION_DENIED)."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not (needs_admin(method) or method.startswith(PEER_PREFIX)):
            return handler
        authority = self.authority

        async def check(context: Any) -> None:
            why = _denial(method, authority.identity(context))
            if why is not None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def guarded_unary(request: Any, context: Any) -> Any:
                await check(context)
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                guarded_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            stream = handler.stream_stream

            async def guarded_stream(request_iterator: Any, context: Any) -> Any:
                await check(context)
                async for reply in stream(request_iterator, context):
                    yield reply

            return grpc.stream_stream_rpc_method_handler(
                guarded_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        raise TypeError(f"no access rule for the call kind of {method}")
