"""`kvstore node list|decommission`: the nodes as placement sees them (docs/sharding.md).

Exit codes as the other client commands: 0 success, 2 usage error, 3 the cluster
answered with an error (a refused decommission names why) or could not be reached or
the decommission did not finish within --wait.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}"


def cmd_node(args: argparse.Namespace) -> int:
    from kvstore.cli import EXIT_ERROR, EXIT_OK, _with_client
    from kvstore.client._nodes import decommission, node_list

    def f(c: Any) -> int:
        if args.node_command == "list":
            rows = c._run(node_list(c._async))
            if args.json:
                print(json.dumps(rows, indent=2))
                return EXIT_OK
            print("ID  ENDPOINT  LIVENESS  PHI  DOWN_FOR  SHARDS  LEADERS  DISK_MIB")
            for r in rows:
                state = r["liveness"] + (",draining" if r["draining"] else "")
                print(
                    f"{r['id']}  {r['endpoint']}  {state}  {r['phi']}  {r['down_for']}  "
                    f"{r['replicas']}  {r['leaders']}  "
                    f"{_mib(r['disk_used_bytes'])}/{_mib(r['disk_capacity_bytes'])}"
                )
            return EXIT_OK
        left = c._run(decommission(c._async, args.id, args.wait))
        if left:
            print(
                f"kvstore node decommission: node {args.id} still holds {left} replicas "
                f"after {args.wait:g} s; run the command again to keep draining it",
                file=sys.stderr,
            )
            return EXIT_ERROR
        print(f"node {args.id} decommissioned: it holds no replicas")
        sys.stdout.flush()
        return EXIT_OK

    return _with_client(args, f)


def register(sub: Any) -> None:
    from kvstore.cli_flags import _client_flags, _positive_float

    p = sub.add_parser("node", help="nodes: list, decommission")
    nsub = p.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    q = nsub.add_parser(
        "list", help="each node: address, liveness (phi), shard and leader counts, disk use"
    )
    q.add_argument("--json", action="store_true", help="print JSON")
    _client_flags(q)
    q.set_defaults(func=cmd_node)
    q = nsub.add_parser(
        "decommission", help="move every replica off node ID (refused if a shard would be short)"
    )
    q.add_argument("id", type=int)
    q.add_argument(
        "--wait",
        type=_positive_float,
        default=300.0,
        help="seconds to wait for the node to hold nothing",
    )
    _client_flags(q)
    q.set_defaults(func=cmd_node)
