"""`kvstore snapshot save|restore|status`: backups of a live cluster (kvstore/backup/).

Exit codes: 0 success; 1 the backup file is corrupt, truncated or unreadable (restore,
status) or cannot be written (save); 2 usage error, including a restore whose flags do
not fit the backup or whose target data directory is not empty; 3 the cluster answered
with an error or could not be reached (save).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

DEFAULT_RESTORED_ID = "kvstore-restored"


def cmd_save(args: argparse.Namespace) -> int:
    from kvstore.backup.fileformat import BackupError
    from kvstore.backup.save import SaveError, save
    from kvstore.cli import EXIT_ERROR, EXIT_FALSE, EXIT_OK, EXIT_USAGE
    from kvstore.security.tls import TLSError, client_tls

    endpoints = [e for e in args.endpoints.split(",") if e]
    try:
        tls = client_tls(args.tls_cacert, args.tls_cert, args.tls_key)
    except TLSError as e:
        print(f"kvstore snapshot save: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        r = save(endpoints, args.file, timeout=args.timeout, tls=tls)
    except (SaveError, BackupError) as e:
        print(f"kvstore snapshot save: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        print(f"kvstore snapshot save: cannot write {args.file}: {e}", file=sys.stderr)
        return EXIT_FALSE
    groups = ", ".join(f"{s.group}@{s.index}" for s in r.sections)
    print(f"saved {args.file}: {r.bytes} bytes, groups {groups}, {r.seconds:.1f} s")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from kvstore.backup.fileformat import BackupError, read_backup
    from kvstore.cli import EXIT_FALSE, EXIT_OK

    try:
        b = read_backup(args.file)
    except BackupError as e:
        print(f"kvstore snapshot status: {e}", file=sys.stderr)
        return EXIT_FALSE
    h = b.header
    print(
        f"format {h['format_version']}  cluster {b.cluster_id}  consensus {b.consensus}  "
        f"sharded {b.sharded}  created_unix {h.get('created_unix', '?')}  (checksums OK)"
    )
    print("GROUP  INDEX  TERM  READ_INDEX  VOTERS  BYTES")
    for s in b.sections:
        print(
            f"{s.group}  {s.index}  {s.term}  {s.read_index}  "
            f"{','.join(map(str, s.voters))}  {s.size}"
        )
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from kvstore.backup.fileformat import BackupError
    from kvstore.backup.restore import RestoreError, check_empty, plan, restore_node
    from kvstore.cli import EXIT_FALSE, EXIT_OK, EXIT_USAGE
    from kvstore.server.process import parse_peers

    def fail(code: int, msg: str) -> int:
        print(f"kvstore snapshot restore: {msg}", file=sys.stderr)
        return code

    if (args.nodes is None) == (args.id is None):
        return fail(EXIT_USAGE, "give either --nodes N (a `kvstore cluster` data dir) or --id ID")
    if args.nodes is not None:
        nodes = {i: f"{args.host}:{args.port + i - 1}" for i in range(1, args.nodes + 1)}
        dirs = {i: os.path.join(args.data_dir, f"node{i}") for i in nodes}
    else:
        try:
            nodes = parse_peers(args.peers)
        except ValueError as e:
            return fail(EXIT_USAGE, f"--peers: {e}")
        if args.id not in nodes:
            return fail(EXIT_USAGE, f"--peers must list this node ({args.id}=HOST:PORT)")
        dirs = {args.id: args.data_dir}
    try:
        check_empty(args.data_dir)
        p = plan(args.file, nodes, dirs, args.cluster_id)
    except RestoreError as e:
        return fail(EXIT_USAGE, str(e))
    except BackupError as e:
        return fail(EXIT_FALSE, f"{e}; nothing was restored")
    made: list[str] = []
    try:
        for node in sorted(dirs):
            groups = restore_node(p, node, args.cluster_id, args.map_size_mb << 20)
            made.append(dirs[node])
            print(f"node {node}: {dirs[node]} (groups {','.join(map(str, groups)) or '-'})")
    except BackupError as e:
        return fail(EXIT_FALSE, f"{e}; remove {', '.join(made) or 'nothing'} and retry")
    consensus = "" if p.backup.consensus == "raft" else f" --consensus {p.backup.consensus}"
    if args.nodes is not None:
        port = "" if args.port == 7001 else f" --port {args.port}"
        print(
            f"start it: kvstore cluster --nodes {args.nodes} --data-dir {args.data_dir} "
            f"--cluster-id {args.cluster_id}{consensus}{port}"
        )
    else:
        print(
            f"start it: kvstore serve --id {args.id} --listen {nodes[args.id]} "
            f"--peers {args.peers} --data-dir {args.data_dir} "
            f"--cluster-id {args.cluster_id}{consensus}"
        )
    return EXIT_OK


def register(sub: Any) -> None:
    from kvstore.cli_flags import _client_flags, _int_at_least

    p = sub.add_parser("snapshot", help="backups: save, restore, status")
    ssub = p.add_subparsers(dest="snapshot_command", required=True, metavar="ACTION")
    q = ssub.add_parser("save", help="save a consistent copy of every shard to FILE")
    q.add_argument("file")
    _client_flags(q)
    q.set_defaults(func=cmd_save)
    q = ssub.add_parser("status", help="verify FILE and list what it holds")
    q.add_argument("file")
    q.set_defaults(func=cmd_status)
    q = ssub.add_parser("restore", help="seed a NEW cluster's data directories from FILE")
    q.add_argument("file")
    q.add_argument("--data-dir", required=True, help="new or empty directory to create")
    q.add_argument(
        "--nodes",
        type=_int_at_least(1),
        default=None,
        help="seed DIR/node1..N for `kvstore cluster --nodes N`",
    )
    q.add_argument("--host", default="127.0.0.1", help="with --nodes: as kvstore cluster")
    q.add_argument(
        "--port", type=_int_at_least(1, 65535), default=7001, help="with --nodes: first port"
    )
    q.add_argument("--id", type=_int_at_least(1), default=None, help="seed one node's DIR")
    q.add_argument("--peers", default="", help="with --id: ID=HOST:PORT,... of the new cluster")
    q.add_argument(
        "--cluster-id",
        default=DEFAULT_RESTORED_ID,
        help=f"the new cluster's id (default {DEFAULT_RESTORED_ID}; must differ from the backup's)",
    )
    q.add_argument("--map-size-mb", type=_int_at_least(1), default=1024, help="LMDB map size")
    q.set_defaults(func=cmd_restore)
