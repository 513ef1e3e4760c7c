"""`kvstore lease grant TTL | keep-alive ID | revoke ID | time-to-live ID | list`.

Exit codes: 0 success; 1 the lease does not exist (keep-alive, revoke, time-to-live);
2 usage error (a TTL out of bounds); 3 the cluster answered with an error or could not
be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def cmd_lease(args: argparse.Namespace) -> int:
    from kvstore.cli import EXIT_FALSE, EXIT_OK, _with_client
    from kvstore.client import NotFound

    def f(c: Any) -> int:
        action = args.lease_command
        try:
            if action == "grant":
                lease = c.grant(args.ttl)
                print(f"lease {lease} granted with TTL {args.ttl:g}s")
            elif action == "keep-alive":
                while True:
                    ttl = c.keep_alive(args.id)
                    print(f"lease {args.id} kept alive with TTL {ttl:g}s", flush=True)
                    if args.once:
                        break
                    time.sleep(max(ttl / 3, 0.1))
            elif action == "revoke":
                if not c.revoke(args.id):
                    print(f"lease {args.id} not found", file=sys.stderr)
                    return EXIT_FALSE
                print(f"lease {args.id} revoked")
            elif action == "time-to-live":
                info = c.time_to_live(args.id, keys=args.keys)
                if info is None:
                    print(f"lease {args.id} not found", file=sys.stderr)
                    return EXIT_FALSE
                print(
                    f"lease {info.id} granted with TTL {info.ttl:g}s, "
                    f"remaining {info.remaining:.1f}s"
                )
                for k in info.keys:
                    sys.stdout.buffer.write(k + b"\n")
            else:
                found = c.leases()
                if args.json:
                    rows = [{"id": i.id, "ttl": i.ttl, "remaining": i.remaining} for i in found]
                    print(json.dumps(rows, indent=2))
                else:
                    for i in found:
                        print(f"{i.id}\tttl={i.ttl:g}s\tremaining={i.remaining:.1f}s")
        except NotFound as e:
            print(f"kvstore lease {action}: {e.message}", file=sys.stderr)
            return EXIT_FALSE
        except KeyboardInterrupt:
            return EXIT_OK
        return EXIT_OK

    return _with_client(args, f)


def _ttl(text: str) -> float:
    from kvstore.statemachine.leases import MAX_TTL_MS, MIN_TTL_MS

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not MIN_TTL_MS <= v * 1000 <= MAX_TTL_MS:
        raise argparse.ArgumentTypeError(
            f"TTL must be {MIN_TTL_MS / 1000:g} to {MAX_TTL_MS / 1000:g} seconds, got {text}"
        )
    return v


def register(sub: Any) -> None:
    from kvstore.cli_flags import _client_flags

    p = sub.add_parser("lease", help="leases: grant, keep-alive, revoke, time-to-live, list")
    lsub = p.add_subparsers(dest="lease_command", required=True, metavar="ACTION")
    q = lsub.add_parser("grant", help="grant a lease of TTL seconds; prints its id")
    q.add_argument("ttl", type=_ttl)
    _client_flags(q)
    q.set_defaults(func=cmd_lease)
    q = lsub.add_parser("keep-alive", help="renew lease ID every TTL/3 until Ctrl-C")
    q.add_argument("id", type=int)
    q.add_argument("--once", action="store_true", help="renew once and exit")
    _client_flags(q)
    q.set_defaults(func=cmd_lease)
    q = lsub.add_parser("revoke", help="revoke lease ID, deleting its keys (exit 1 if absent)")
    q.add_argument("id", type=int)
    _client_flags(q)
    q.set_defaults(func=cmd_lease)
    q = lsub.add_parser("time-to-live", help="what lease ID has left (exit 1 if absent)")
    q.add_argument("id", type=int)
    q.add_argument("--keys", action="store_true", help="also list its keys")
    _client_flags(q)
    q.set_defaults(func=cmd_lease)
    q = lsub.add_parser("list", help="every lease: id, TTL, remaining")
    q.add_argument("--json", action="store_true", help="print JSON")
    _client_flags(q)
    q.set_defaults(func=cmd_lease)
