"""etcd v3 as a benchmark target: one grpc.aio channel per member, unary Put and Range.

Rule this module keeps: requests go round-robin over the members, as etcd's own clientv3
balancer does; a strong read is etcd's default linearizable Range and an eventual read is
a serializable Range. etcd has no causal read mode, so asking for one is an error. With
`kvstore bench --cacert --cert --key` the channels are mutual TLS, as etcdctl's.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

import grpc

from kvstore.bench import etcd_api
from kvstore.security.tls import client_tls, open_channel

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.enable_retries", 0),
]


class EtcdTarget:
    def __init__(self, channels: list[grpc.aio.Channel], timeout_s: float) -> None:
        self._channels = channels
        self._timeout_s = timeout_s
        self._put: list[Any] = [
            ch.unary_unary(
                etcd_api.PUT_METHOD,
                request_serializer=etcd_api.PutRequest.SerializeToString,
                response_deserializer=etcd_api.PutResponse.FromString,
            )
            for ch in channels
        ]
        self._range: list[Any] = [
            ch.unary_unary(
                etcd_api.RANGE_METHOD,
                request_serializer=etcd_api.RangeRequest.SerializeToString,
                response_deserializer=etcd_api.RangeResponse.FromString,
            )
            for ch in channels
        ]
        self._next = itertools.cycle(range(len(channels)))

    @classmethod
    async def connect(cls, endpoints: Sequence[str], timeout_s: float) -> EtcdTarget:
        tls = client_tls(*(os.environ.get(f"KVSTORE_{n}") for n in ("CACERT", "CERT", "KEY")))
        channels = [open_channel(ep, _CHANNEL_OPTIONS, tls) for ep in endpoints]
        for ch in channels:
            await ch.channel_ready()
        return cls(channels, timeout_s)

    async def put(self, key: bytes, value: bytes) -> None:
        i = next(self._next)
        await self._put[i](etcd_api.PutRequest(key=key, value=value), timeout=self._timeout_s)

    async def get(self, key: bytes, read_mode: str) -> bytes | None:
        if read_mode == "causal":
            raise ValueError("etcd has no causal read mode (use strong or eventual)")
        i = next(self._next)
        req = etcd_api.RangeRequest(key=key, serializable=read_mode == "eventual")
        resp = await self._range[i](req, timeout=self._timeout_s)
        return bytes(resp.kvs[0].value) if resp.kvs else None

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()

    def retries(self) -> dict[str, int]:
        return {}  # etcd_target sends each request once (gRPC retries are off)


def probe_etcd(
    endpoints: Sequence[str], timeout_s: float = 2.0, creds: grpc.ChannelCredentials | None = None
) -> bool:
    """True when a Put and a linearizable Range succeed on every member (blocking)."""
    for ep in endpoints:
        ch0 = grpc.insecure_channel(ep) if creds is None else grpc.secure_channel(ep, creds)
        with ch0 as ch:
            put = ch.unary_unary(
                etcd_api.PUT_METHOD,
                request_serializer=etcd_api.PutRequest.SerializeToString,
                response_deserializer=etcd_api.PutResponse.FromString,
            )
            rng = ch.unary_unary(
                etcd_api.RANGE_METHOD,
                request_serializer=etcd_api.RangeRequest.SerializeToString,
                response_deserializer=etcd_api.RangeResponse.FromString,
            )
            put(etcd_api.PutRequest(key=b"bench-probe", value=ep.encode()), timeout=timeout_s)
            resp = rng(etcd_api.RangeRequest(key=b"bench-probe"), timeout=timeout_s)
            if not resp.kvs:
                return False
    return True
