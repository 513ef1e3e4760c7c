"""kvstore snapshot save: every group of a live cluster, each at a linearizable point.

Rule: the file holds every shard that tiles the key space (and the meta group), each
image taken after a ReadIndex barrier on the group's leader (kvstore/backup/service.py),
so every write acknowledged before the save started is in it. Groups are saved one
after another: the file is a per-shard point-in-time copy, not one cross-shard instant
(as with TiKV's and CockroachDB's per-range backups without a global timestamp). A
split during the save is detected (the saved ranges do not tile the key space) and the
save fails without writing the file.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import grpc

from kvstore._pb import admin_pb2, admin_pb2_grpc
from kvstore.backup.fileformat import BackupWriter, Section
from kvstore.security.tls import ChannelTLS
from kvstore.shard import descriptor as desc
from kvstore.shard.descriptor import META_GROUP

_OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]


class SaveError(Exception):
    """The cluster could not be backed up (unreachable, no leader, layout changed)."""


@dataclass(frozen=True, slots=True)
class SaveResult:
    path: str
    sections: list[Section]
    bytes: int
    seconds: float


class _Progress:
    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        self.t0 = self.last = time.monotonic()

    def show(self, group: int, got: int, total: int, force: bool = False) -> None:
        now = time.monotonic()
        # Only a save that takes a while reports (a small store prints nothing).
        if self.out is None or now - self.t0 < 1.0 or (not force and now - self.last < 1.0):
            return
        self.last = now
        mb = total / 1e6
        print(
            f"snapshot save: group {group}: {got / 1e6:.1f} MB; total {mb:.1f} MB "
            f"in {now - self.t0:.1f} s",
            file=self.out,
            flush=True,
        )


def _channel(endpoint: str, tls: ChannelTLS | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(endpoint, options=_OPTIONS)
    return grpc.secure_channel(endpoint, tls.credentials(), options=_OPTIONS)


def _call(
    endpoint: str, tls: ChannelTLS | None, fn: Callable[[admin_pb2_grpc.AdminStub], Any]
) -> Any:
    with _channel(endpoint, tls) as ch:
        return fn(admin_pb2_grpc.AdminStub(ch))


def _layout(
    endpoints: Sequence[str], timeout: float, tls: ChannelTLS | None
) -> tuple[list[int], list[str]]:
    """(groups to save, every node's endpoint)."""
    errors = []
    for ep in endpoints:
        try:
            m = _call(ep, tls, lambda s: s.ShardMap(admin_pb2.ShardMapRequest(), timeout=timeout))
        except grpc.RpcError as e:
            errors.append(f"{ep}: {e.code().name} {e.details()}")
            continue
        nodes = sorted(set(m.nodes.values()) | set(endpoints))
        if not m.shards:
            return [1], nodes
        return [*sorted(d.id for d in m.shards), META_GROUP], nodes
    raise SaveError("no node answered: " + "; ".join(errors))


def _candidates(
    group: int, nodes: Sequence[str], timeout: float, tls: ChannelTLS | None
) -> list[str]:
    """Endpoints to ask for ``group``'s image, its leader first."""
    leaders: list[str] = []
    hosts: list[str] = []
    for ep in nodes:
        try:
            st = _call(ep, tls, lambda s: s.Status(admin_pb2.StatusRequest(), timeout=timeout))
        except grpc.RpcError:
            continue
        for g in st.groups:
            if g.group != group:
                continue
            hosts.append(ep)
            if g.role == "leader":
                leaders.append(ep)
            elif g.leader_endpoint:
                leaders.append(g.leader_endpoint)
    order = [*leaders, *hosts]
    return list(dict.fromkeys(order))


def _save_group(
    w: BackupWriter,
    group: int,
    endpoint: str,
    timeout: float,
    header: dict[str, Any],
    progress: _Progress,
    tls: ChannelTLS | None,
) -> Section:
    got = 0
    start: Any = None
    with _channel(endpoint, tls) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)
        stream = stub.Backup(admin_pb2.BackupRequest(group=group), timeout=timeout)
        for chunk in stream:
            if chunk.HasField("start"):
                start = chunk.start
                want = {
                    "cluster_id": start.cluster_id,
                    "consensus": start.consensus,
                    "sharded": start.sharded,
                    "meta_voters": list(start.meta_voters),
                }
                if w.header is None:
                    w.write_header({**want, **header})
                assert w.header is not None
                for k in ("cluster_id", "consensus"):
                    if w.header[k] != want[k]:
                        raise SaveError(
                            f"group {group} on {endpoint} answered {k}={want[k]}, "
                            f"the first group {w.header[k]}"
                        )
                w.begin_section()
            elif chunk.HasField("done"):
                d = chunk.done
                return Section(
                    group=group,
                    index=d.index,
                    term=d.term,
                    voters=tuple(d.voters),
                    learners=tuple(d.learners),
                    read_index=start.read_index,
                    size=d.size,
                    crc32=d.crc32,
                    shard=d.shard,
                )
            else:
                w.data(chunk.data)
                got += len(chunk.data)
                progress.show(group, got, w.size)
    raise SaveError(f"group {group}: the stream from {endpoint} ended early")


def _check_tiling(sections: list[Section]) -> None:
    shards = sorted(
        (desc.decode(s.shard) for s in sections if s.group != META_GROUP and s.shard),
        key=lambda d: d.start,
    )
    if not shards:
        return
    at = b""
    for d in shards:
        if d.start != at:
            raise SaveError(
                "the shard layout changed during the save (a split?): the saved ranges "
                f"leave a gap or overlap at {at!r}; run it again"
            )
        at = d.end
        if at == b"":
            break
    if at != b"" or shards[-1].end != b"":
        raise SaveError("the saved shards do not reach the end of the key space; run it again")


def save(
    endpoints: Sequence[str],
    path: str,
    *,
    timeout: float = 5.0,
    stream_timeout: float = 3600.0,
    progress: TextIO | None = sys.stderr,
    tls: ChannelTLS | None = None,
) -> SaveResult:
    t0 = time.monotonic()
    groups, nodes = _layout(endpoints, timeout, tls)
    prog = _Progress(progress)
    header: dict[str, Any] = {"groups": groups, "created_unix": int(time.time())}
    w = BackupWriter(path)
    sections: list[Section] = []
    try:
        for group in groups:
            errors: list[str] = []
            deadline = time.monotonic() + max(timeout, 10.0)
            section = None
            while section is None and time.monotonic() < deadline:
                cands = _candidates(group, nodes, timeout, tls)
                for ep in cands:
                    try:
                        section = _save_group(w, group, ep, stream_timeout, header, prog, tls)
                        break
                    except grpc.RpcError as e:
                        w.rollback_section()
                        errors.append(f"{ep}: {e.code().name} {e.details()}")
                if section is None:
                    time.sleep(0.3)
            if section is None:
                raise SaveError(f"group {group}: no node could back it up: {'; '.join(errors)}")
            w.end_section(section)
            sections.append(section)
            prog.show(group, section.size, w.size, force=True)
        _check_tiling(sections)
        w.commit()
        return SaveResult(path, sections, w.size, time.monotonic() - t0)
    except BaseException:
        w.abort()
        raise
