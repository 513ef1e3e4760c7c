"""`kvstore shard list|split|merge|move|transfer-leader`: the shard map, online splits
and merges, moves (docs/sharding.md).

Exit codes as the other client commands: 0 success, 2 usage error, 3 the cluster
answered with an error or could not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def cmd_shard(args: argparse.Namespace) -> int:
    from kvstore.cli import EXIT_OK, _with_client

    def f(c: Any) -> int:
        if args.shard_command == "list":
            rows = c.shards()
            if args.json:
                print(json.dumps(rows, indent=2))
            elif not rows:
                print("unsharded: one group holds the whole key space (start with --shards)")
            else:
                print("ID  RANGE  VERSION  CONF_VER  VOTERS  LEARNERS  LEADER  KEYS  BYTES")
                for r in rows:
                    end = repr(r["end"]) if r["end"] else "+inf"
                    print(
                        f"{r['id']}  [{r['start']!r}, {end})  {r['version']}  {r['conf_ver']}  "
                        f"{','.join(map(str, r['voters']))}  "
                        f"{','.join(map(str, r['learners'])) or '-'}  "
                        f"{r['leader'] or '-'}  {r['keys']}  {r['bytes']}"
                    )
            return EXIT_OK
        if args.shard_command in ("move", "transfer-leader"):
            return _move(c, args)
        if args.shard_command == "merge":
            out = c.merge_shard(args.id)
            m = out["merged"]
            end = repr(m["end"]) if m["end"] else "+inf"
            print(
                f"merged shard {out['source']} into shard {m['id']}: "
                f"{m['id']}=[{m['start']!r}, {end}) version={m['version']}"
            )
            sys.stdout.flush()
            return EXIT_OK
        out = c.split_shard(args.id, args.at)
        left, right = out["left"], out["right"]
        end = repr(right["end"]) if right["end"] else "+inf"
        print(
            f"split shard {left['id']}: {left['id']}=[{left['start']!r}, {left['end']!r}) "
            f"{right['id']}=[{right['start']!r}, {end}) version={left['version']}"
        )
        sys.stdout.flush()
        return EXIT_OK

    return _with_client(args, f)


def _move(c: Any, args: argparse.Namespace) -> int:
    from kvstore.cli import EXIT_OK
    from kvstore.client._nodes import move_shard, transfer_shard_leader

    if args.shard_command == "transfer-leader":
        leader = c._run(transfer_shard_leader(c._async, args.id, args.to))
        print(f"shard {args.id}: leader is now node {leader}")
        return EXIT_OK
    out = c._run(move_shard(c._async, args.id, args.from_node, args.to, args.wait))
    print(
        f"moved shard {args.id} from node {args.from_node} to node {args.to}: "
        f"voters {','.join(map(str, out['voters']))}"
    )
    sys.stdout.flush()
    return EXIT_OK


def register(sub: Any) -> None:
    from kvstore.cli_flags import _client_flags, _positive_float

    p = sub.add_parser("shard", help="shards: list, split, merge, move, transfer-leader")
    ssub = p.add_subparsers(dest="shard_command", required=True, metavar="ACTION")
    q = ssub.add_parser("list", help="id, range, version, replicas, leader, size of each shard")
    q.add_argument("--json", action="store_true", help="print JSON")
    _client_flags(q)
    q.set_defaults(func=cmd_shard)
    q = ssub.add_parser("split", help="split shard ID online at --at KEY (default: its middle)")
    q.add_argument("id", type=int)
    q.add_argument("--at", default=None, help="first key of the new right-hand shard")
    _client_flags(q)
    q.set_defaults(func=cmd_shard)
    q = ssub.add_parser(
        "merge",
        help="merge shard ID with its right neighbour online (both on the same nodes)",
    )
    q.add_argument("id", type=int, help="the left shard")
    _client_flags(q)
    q.set_defaults(func=cmd_shard)
    q = ssub.add_parser(
        "move", help="move shard ID's replica --from NODE --to NODE (learner, promote, remove)"
    )
    q.add_argument("id", type=int)
    q.add_argument("--from", dest="from_node", type=int, required=True, help="node id")
    q.add_argument("--to", type=int, required=True, help="node id")
    q.add_argument(
        "--wait", type=_positive_float, default=120.0, help="seconds to wait for the move"
    )
    _client_flags(q)
    q.set_defaults(func=cmd_shard)
    q = ssub.add_parser("transfer-leader", help="move shard ID's leadership to --to NODE")
    q.add_argument("id", type=int)
    q.add_argument("--to", type=int, required=True, help="node id (a voter of the shard)")
    _client_flags(q)
    q.set_defaults(func=cmd_shard)
