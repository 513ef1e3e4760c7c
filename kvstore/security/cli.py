"""`kvstore certs init DIR [--nodes N] [--hosts H,...]`: development certificates.

Exit codes: 0 made (or already there), 1 cannot write or read DIR (a local file, as for
`kvstore snapshot`), 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def cmd_certs(args: argparse.Namespace) -> int:
    from kvstore.security import certs

    if args.nodes < 1:
        print("kvstore certs init: --nodes must be >= 1", file=sys.stderr)
        return 2
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    try:
        made = certs.init(args.dir, args.nodes, hosts)
    except (OSError, ValueError) as e:
        print(f"kvstore certs init: {e}", file=sys.stderr)
        return 1
    for path in made:
        print(f"wrote {path}")
    if not made:
        print(f"{args.dir}: every certificate is already there")
    print("node <i> serves with: " + " ".join(certs.serve_flags(args.dir, "<i>")))
    print("clients (admin role): " + " ".join(certs.client_flags(args.dir)))
    print("clients (read/write): " + " ".join(certs.client_flags(args.dir, "client")))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("certs", help="development CA and certificates for a TLS cluster")
    csub = p.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    q = csub.add_parser(
        "init",
        help="make DIR/ca.pem, node-<id>.pem, client.pem (read/write), admin.pem (admin)",
    )
    q.add_argument("dir", help="directory for the PEM files (kept if present)")
    q.add_argument("--nodes", type=int, default=3, help="node certificates node-1..node-N")
    q.add_argument(
        "--hosts",
        default=os.environ.get("KVSTORE_HOSTS", ""),
        help="extra host names or IPs the node certificates are valid for "
        "(always: localhost, 127.0.0.1, ::1)",
    )
    q.set_defaults(func=cmd_certs)
