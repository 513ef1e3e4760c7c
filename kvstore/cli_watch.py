"""`kvstore compact REV` and `kvstore watch KEY [--prefix] [--rev N]` (docs/watch.md).

Exit codes: 0 success; 2 usage error; 3 the cluster answered with an error (such as a
compacted start revision: the message names the oldest available) or could not be
reached.
"""

from __future__ import annotations

import argparse
from typing import Any


def cmd_compact(args: argparse.Namespace) -> int:
    from kvstore.cli import EXIT_OK, _with_client

    def f(c: Any) -> int:
        for shard, rev in sorted(c.compact(args.revision).items()):
            print(f"shard {shard}: compacted through revision {rev}")
        return EXIT_OK

    return _with_client(args, f)


def cmd_watch(args: argparse.Namespace) -> int:
    from kvstore.cli import EXIT_OK, _out, _with_client
    from kvstore.client import WatchEvent

    def f(c: Any) -> int:
        seen = 0
        with c.watch(
            args.key,
            prefix=args.prefix,
            start_revision=args.rev or None,
            progress_notify=args.progress,
        ) as w:
            try:
                for item in w:
                    if isinstance(item, WatchEvent):
                        kind = b"PUT" if item.type == "put" else b"DELETE"
                        _out(b"%d\t%s\t%s\t%s" % (item.revision, kind, item.key, item.value))
                        seen += 1
                        if args.count and seen >= args.count:
                            return EXIT_OK
                    else:
                        _out(b"%d\tPROGRESS\t%s" % (item.revision, item.start))
            except KeyboardInterrupt:
                return EXIT_OK
        return EXIT_OK

    return _with_client(args, f)


def register(sub: Any) -> None:
    from kvstore.cli_flags import _client_flags, _int_at_least

    p = sub.add_parser("compact", help="drop history up to revision REV (every shard)")
    p.add_argument("revision", type=_int_at_least(1), metavar="REV")
    _client_flags(p)
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser(
        "watch",
        help="print KEY's changes as REVISION<TAB>PUT|DELETE<TAB>KEY<TAB>VALUE lines",
    )
    p.add_argument("key")
    p.add_argument("--prefix", action="store_true", help="every key starting with KEY")
    p.add_argument(
        "--rev",
        type=_int_at_least(0),
        default=0,
        help="from this revision of each shard (0: from now)",
    )
    p.add_argument(
        "--progress",
        action="store_true",
        help="also print REVISION<TAB>PROGRESS<TAB>START lines (current through REVISION)",
    )
    p.add_argument(
        "--count", type=_int_at_least(0), default=0, help="stop after this many events (0: never)"
    )
    _client_flags(p)
    p.set_defaults(func=cmd_watch)
