"""The few etcd v3 KV messages the benchmark needs, built at run time.

Rule this module keeps: wire compatibility with etcd's public v3 API (package
`etcdserverpb`, service `KV`, methods Range and Put) using only the field numbers that the
API reference publishes, so no etcd source or generated code is vendored and no code
generator runs. Fields we never set are left out; protobuf skips unknown fields on read.
It performs no I/O.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "etcdserverpb"
PUT_METHOD = f"/{PACKAGE}.KV/Put"
RANGE_METHOD = f"/{PACKAGE}.KV/Range"

_F = descriptor_pb2.FieldDescriptorProto
# (message, [(field name, number, type, label, message type name or "")])
_MESSAGES: list[tuple[str, list[tuple[str, int, int, int, str]]]] = [
    (
        "ResponseHeader",
        [
            ("cluster_id", 1, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
            ("member_id", 2, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
            ("revision", 3, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("raft_term", 4, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
        ],
    ),
    (
        # mvccpb.KeyValue on the wire; the package name does not travel.
        "KeyValue",
        [
            ("key", 1, _F.TYPE_BYTES, _F.LABEL_OPTIONAL, ""),
            ("create_revision", 2, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("mod_revision", 3, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("version", 4, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("value", 5, _F.TYPE_BYTES, _F.LABEL_OPTIONAL, ""),
            ("lease", 6, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
        ],
    ),
    (
        "PutRequest",
        [
            ("key", 1, _F.TYPE_BYTES, _F.LABEL_OPTIONAL, ""),
            ("value", 2, _F.TYPE_BYTES, _F.LABEL_OPTIONAL, ""),
            ("lease", 3, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("prev_kv", 4, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
        ],
    ),
    (
        "PutResponse",
        [
            ("header", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "ResponseHeader"),
            ("prev_kv", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "KeyValue"),
        ],
    ),
    (
        "RangeRequest",
        [
            ("key", 1, _F.TYPE_BYTES, _F.LABEL_OPTIONAL, ""),
            ("range_end", 2, _F.TYPE_BYTES, _F.LABEL_OPTIONAL, ""),
            ("limit", 3, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("revision", 4, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            # serializable=true: served by the member from its local state, no ReadIndex.
            ("serializable", 7, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
        ],
    ),
    (
        "RangeResponse",
        [
            ("header", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "ResponseHeader"),
            ("kvs", 2, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "KeyValue"),
            ("more", 3, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
            ("count", 4, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
        ],
    ),
]


def _build() -> dict[str, Any]:
    fd = descriptor_pb2.FileDescriptorProto(
        name="kvstore_bench/etcd_kv_minimal.proto", package=PACKAGE, syntax="proto3"
    )
    for name, fields in _MESSAGES:
        msg = fd.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f".{PACKAGE}.{type_name}"
    # A private pool: these names must not clash with a real etcd client loaded beside us.
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(fd.SerializeToString())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name, _ in _MESSAGES
    }


_CLASSES = _build()
PutRequest: Any = _CLASSES["PutRequest"]
PutResponse: Any = _CLASSES["PutResponse"]
RangeRequest: Any = _CLASSES["RangeRequest"]
RangeResponse: Any = _CLASSES["RangeResponse"]
