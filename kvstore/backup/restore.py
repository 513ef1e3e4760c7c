"""kvstore snapshot restore: seed a new cluster's data directories from a backup file.

Rule: nothing is written unless the whole file verified (fileformat.read_backup) and
every target directory is absent or empty; each directory is built beside its target
and renamed into place only when complete, so a failure leaves no half-seeded
directory. Each restored group starts from the backup's image as an installed snapshot
(log base = the image's index and term, applied = committed = that index, membership
from the backup), as a member would after InstallSnapshot; the node identity gets the
new cluster id (as etcd's snapshot restore gives the restored cluster a new one) and the
member addresses of the new cluster, so a restored node can never talk to the old one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from kvstore.backup.fileformat import Backup, BackupError, Section, read_backup, section_chunks
from kvstore.consensus.types import ConfState, HardState, Snapshot, SnapshotMetadata
from kvstore.server import sharding
from kvstore.shard.descriptor import META_GROUP
from kvstore.storage import NodeStorage
from kvstore.storage.snapshot import staged_ref


class RestoreError(Exception):
    """The restore cannot go ahead (flags do not fit the backup, target not empty)."""


@dataclass(frozen=True, slots=True)
class Plan:
    backup: Backup
    nodes: dict[int, str]
    """The new cluster: node id -> HOST:PORT."""
    dirs: dict[int, str]
    """Node id -> data directory to create (only the nodes restored here)."""


def check_empty(path: str) -> None:
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise RestoreError(
            f"data directory {path} is not empty: restore only into a new or empty "
            "directory (nothing was changed)"
        )


def plan(path: str, nodes: Mapping[int, str], dirs: Mapping[int, str], cluster_id: str) -> Plan:
    """Verify the file and the target; raises BackupError or RestoreError."""
    for d in dirs.values():
        check_empty(d)
    backup = read_backup(path)
    if cluster_id == backup.cluster_id:
        raise RestoreError(
            f"the restored cluster needs a new cluster id; the backup's is {cluster_id!r} "
            "(give another --cluster-id)"
        )
    if not backup.sections:
        raise BackupError(f"backup file {path} holds no groups")
    if backup.sharded:
        if not any(s.group == META_GROUP for s in backup.sections):
            raise BackupError(f"backup file {path} is sharded but holds no meta group")
        need = set(backup.meta_voters)
        for s in backup.sections:
            need |= set(s.voters) | set(s.learners)
        missing = sorted(need - set(nodes))
        if missing:
            raise RestoreError(
                f"the backup's shards have replicas on nodes {sorted(need)}; the new cluster "
                f"lacks node(s) {missing} (restore a sharded backup to the same node ids)"
            )
    return Plan(backup, dict(nodes), dict(dirs))


def _members(p: Plan, s: Section) -> ConfState:
    if p.backup.sharded:
        return ConfState(voters=frozenset(s.voters), learners=frozenset(s.learners))
    # An unsharded cluster is one group on every node of the new cluster.
    return ConfState(voters=frozenset(p.nodes))


def _hosts(p: Plan, s: Section, node: int) -> bool:
    cs = _members(p, s)
    return node in cs.voters or node in cs.learners


def restore_node(p: Plan, node: int, cluster_id: str, map_size: int) -> list[int]:
    """Build ``p.dirs[node]``; returns the groups restored there."""
    target = p.dirs[node]
    tmp = f"{target.rstrip(os.sep)}.restoring"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    groups = []
    try:
        with NodeStorage(tmp, map_size=map_size) as st:
            for s in p.backup.sections:
                if not _hosts(p, s, node):
                    continue
                _install(p, st, tmp, s)
                groups.append(s.group)
            with st.write() as w:
                w.set_meta(b"cluster_id", cluster_id.encode())
                w.set_meta(b"node_id", str(node).encode())
                w.set_meta(b"consensus", p.backup.consensus.encode())
                if p.backup.sharded:
                    w.set_meta(sharding.SHARDED, b"1")
                    # The meta group's membership as of its image (placement may have
                    # changed it since the cluster's first start).
                    metas = [s.voters for s in p.backup.sections if s.group == META_GROUP]
                    voters = ",".join(
                        map(str, metas[0] if metas else p.backup.meta_voters)
                    ).encode()
                    w.set_meta(sharding.META_VOTERS, voters)
        if os.path.isdir(target):
            os.rmdir(target)  # checked empty
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return groups


def _install(p: Plan, st: NodeStorage, tmp: str, s: Section) -> None:
    image = os.path.join(tmp, f"restore-{s.group}.img")
    with open(image, "wb") as f:
        for chunk in section_chunks(p.backup.path, s):
            f.write(chunk)
    cs = _members(p, s)
    meta = SnapshotMetadata(index=s.index, term=s.term, conf_state=cs)
    try:
        with st.write() as w:
            w.save(
                s.group,
                hard_state=HardState(term=s.term, commit=s.index),
                snapshot=Snapshot(metadata=meta, data=staged_ref(image)),
            )
        # The image's address book names the old cluster's nodes: the new ones replace it.
        with st.write() as w:
            for old in st_members(st, s.group):
                w.set_member_address(s.group, old, "")
            for n in sorted(cs.voters | cs.learners):
                w.set_member_address(s.group, n, p.nodes[n])
    finally:
        os.unlink(image)
    if s.group == META_GROUP and not p.backup.sharded:
        raise BackupError("backup file holds a meta group but is not sharded")


def st_members(st: NodeStorage, group: int) -> list[int]:
    return sorted(st.group(group).member_addresses())
