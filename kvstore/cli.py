"""`kvstore`: run nodes (serve, cluster) and talk to a cluster (put, get, ... status).

Every flag can also come from an environment variable KVSTORE_<FLAG> (``--data-dir``
-> KVSTORE_DATA_DIR) or from a TOML file given with ``--config FILE`` (KVSTORE_CONFIG),
whose keys are the flag names (``data-dir = "/var/lib/kvstore"`` or ``data_dir``).
Precedence: command line, then environment, then the file, then the default.

Exit codes: 0 success, 1 the key is absent (get, delete) or the compare failed (cas),
2 usage error, 3 the cluster answered with an error or could not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from kvstore.cli_flags import (
    _CONFIG,
    _FLAGS,
    EXIT_ERROR,
    EXIT_FALSE,
    EXIT_OK,
    EXIT_USAGE,
    _add,
    _client_flags,
    _config_path,
    _int_at_least,
    _invalid_defaults,
    load_config,
)
from kvstore.cli_serve import register as register_serve

__all__ = ["EXIT_ERROR", "EXIT_FALSE", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]


# -- client commands --------------------------------------------------------------------
def _with_client(args: argparse.Namespace, fn: Callable[[Any], int]) -> int:
    from kvstore.client import Client, KVError

    try:
        with Client(
            args.endpoints,
            timeout=args.timeout,
            cacert=args.tls_cacert or None,
            cert=args.tls_cert or None,
            key=args.tls_key or None,
        ) as c:
            return fn(c)
    except KVError as e:
        kind = type(e).__name__
        print(f"kvstore {args.command}: {kind}: {e.message}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as e:
        print(f"kvstore {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE


def _out(data: bytes) -> None:
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.flush()


def cmd_put(args: argparse.Namespace) -> int:
    def f(c: Any) -> int:
        rev = c.put(args.key, args.value, args.lease)
        print(f"OK revision={rev}")
        return EXIT_OK

    return _with_client(args, f)


def cmd_get(args: argparse.Namespace) -> int:
    def f(c: Any) -> int:
        value = c.get(args.key, read_mode=args.read_mode, revision=args.rev)
        if value is None:
            print(f"kvstore get: key {args.key!r} not found", file=sys.stderr)
            return EXIT_FALSE
        _out(value)
        return EXIT_OK

    return _with_client(args, f)


def cmd_delete(args: argparse.Namespace) -> int:
    def f(c: Any) -> int:
        # Exit 1 when absent, as get: a script sees the same answer to the same question.
        if not c.delete(args.key):
            print(f"kvstore delete: key {args.key!r} not found", file=sys.stderr)
            return EXIT_FALSE
        print("deleted")
        return EXIT_OK

    return _with_client(args, f)


def cmd_cas(args: argparse.Namespace) -> int:
    def f(c: Any) -> int:
        expected = None if args.expect_absent else args.expected
        if expected is None and args.expected not in (None, ""):
            print("kvstore cas: give EXPECTED or --expect-absent, not both", file=sys.stderr)
            return EXIT_USAGE
        if expected is None and not args.expect_absent:
            # Without this, `cas KEY NEW` would silently mean "swap only if KEY is absent".
            print("kvstore cas: give EXPECTED or --expect-absent", file=sys.stderr)
            return EXIT_USAGE
        ok = c.cas(args.key, expected, args.new)
        if ok:
            print("swapped")
        elif args.expect_absent:
            print("not swapped: the key exists")
        else:
            print("not swapped: the value did not match")
        return EXIT_OK if ok else EXIT_FALSE

    return _with_client(args, f)


def cmd_scan(args: argparse.Namespace) -> int:
    def f(c: Any) -> int:
        for k, v in c.scan(args.start, args.end, args.limit, read_mode=args.read_mode):
            _out(k + b"\t" + v)
        return EXIT_OK

    return _with_client(args, f)


def cmd_status(args: argparse.Namespace) -> int:
    def f(c: Any) -> int:
        nodes = c.status()
        if args.json:
            print(json.dumps(nodes, indent=2))
        else:
            for n in nodes:
                if not n["reachable"]:
                    print(f"{n['endpoint']}  unreachable  ({n['error']})")
                    continue
                for g in n["groups"]:
                    sh = g.get("shard")
                    rng = f" shard=[{sh['start']!r}, {sh['end']!r})" if sh else ""
                    print(
                        f"{n['endpoint']}  id={n['id']} group={g['group']} role={g['role']} "
                        f"term={g['term']} leader={g['leader']} commit={g['commit']} "
                        f"applied={g['applied']}{rng}"
                    )
        return EXIT_OK if any(n["reachable"] for n in nodes) else EXIT_ERROR

    return _with_client(args, f)


def cmd_transfer_leader(args: argparse.Namespace) -> int:
    def f(c: Any) -> int:
        leader = c.transfer_leader(args.to)
        print(f"leader is now {leader}")
        return EXIT_OK

    return _with_client(args, f)


def cmd_member(args: argparse.Namespace) -> int:
    def f(c: Any) -> int:
        action = args.member_command
        if action == "list":
            out = c.members()
        elif action == "add-learner":
            out = c.add_learner(args.id, args.endpoint)
        elif action == "promote":
            out = c.promote(args.id)
        elif action == "demote":
            out = c.demote(args.id)
        elif action == "replace":
            return _replace(c, args)
        else:
            out = c.remove_member(args.id)
        voters = ",".join(map(str, out["voters"]))
        print(f"voters={voters} learners={','.join(map(str, out['learners']))}")
        return EXIT_OK

    return _with_client(args, f)


def _leader_group(c: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    for n in c.status():
        for g in n.get("groups", []):
            if g["group"] == 1 and g["role"] == "leader":
                return n, g
    raise _NoLeader


class _NoLeader(Exception):
    pass


def _replace(c: Any, args: argparse.Namespace) -> int:
    """member replace OLD NEW ADDR: NEW joins as a learner (unless it is one), catches
    up, then one joint change makes it a voter and removes OLD (Raft only)."""
    try:
        node, group = _leader_group(c)
    except _NoLeader:
        print("kvstore member: no leader found", file=sys.stderr)
        return EXIT_ERROR
    if node["consensus"] != "raft":
        print(
            "kvstore member replace: needs joint consensus, which only --consensus raft has; "
            "promote the new node, then remove the old one",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if args.new not in group["learners"]:
        c.add_learner(args.new, args.endpoint)
    deadline = time.monotonic() + args.catch_up_timeout
    while True:
        _, group = _leader_group(c)
        row = next((p for p in group["progress"] if p["id"] == args.new), None)
        if row is not None and row["state"] == "replicate" and row["match"] >= group["commit"]:
            break
        if time.monotonic() > deadline:
            print(
                f"kvstore member replace: node {args.new} did not catch up within "
                f"{args.catch_up_timeout:g} s (progress: {row}); it stays a learner",
                file=sys.stderr,
            )
            return EXIT_ERROR
        time.sleep(0.2)
    out = c.replace_member(args.old, args.new)
    voters, learners = ",".join(map(str, out["voters"])), ",".join(map(str, out["learners"]))
    print(f"voters={voters} learners={learners}")
    return EXIT_OK


# -- the parser -----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvstore", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_serve(sub)

    p = sub.add_parser("put", help="write KEY=VALUE")
    p.add_argument("key")
    p.add_argument("value")
    p.add_argument("--lease", type=int, default=0, help="attach the key to lease ID")
    _client_flags(p)
    p.set_defaults(func=cmd_put)

    for name, helptext in (("get", "print KEY's value (exit 1 when absent)"),):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("key")
        _add(
            p,
            "--read-mode",
            choices=("strong", "eventual", "causal"),
            default="strong",
            help="consistency of the read",
        )
        _add(
            p,
            "--rev",
            type=_int_at_least(0),
            default=0,
            help="read KEY as of this revision of its shard (0: the latest)",
        )
        _client_flags(p)
        p.set_defaults(func=cmd_get)

    p = sub.add_parser("delete", help="delete KEY (exit 1 when absent)")
    p.add_argument("key")
    _client_flags(p)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser(
        "cas", help="set KEY to NEW iff its value is EXPECTED (exit 1 when it is not)"
    )
    p.add_argument("key")
    p.add_argument("expected", nargs="?", default=None)
    p.add_argument("new")
    p.add_argument("--expect-absent", action="store_true", help="swap only if KEY is absent")
    _client_flags(p)
    p.set_defaults(func=cmd_cas)

    p = sub.add_parser("scan", help="print KEY<TAB>VALUE lines for keys in [START, END)")
    p.add_argument("start", nargs="?", default="")
    p.add_argument("end", nargs="?", default="")
    _add(
        p,
        "--limit",
        type=_int_at_least(0),
        default=0,
        help="at most this many keys (0: server limit)",
    )
    _add(
        p,
        "--read-mode",
        choices=("strong", "eventual", "causal"),
        default="strong",
        help="consistency of the read",
    )
    _client_flags(p)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("status", help="per node: reachability, role, term, leader, indexes")
    p.add_argument("--json", action="store_true", help="print JSON")
    _client_flags(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("transfer-leader", help="move leadership to node --to ID")
    _add(p, "--to", type=_int_at_least(1), required=True, help="the node id to lead")
    _client_flags(p)
    p.set_defaults(func=cmd_transfer_leader)

    p = sub.add_parser(
        "member", help="membership: list, add-learner, promote, demote, remove, replace"
    )
    msub = p.add_subparsers(dest="member_command", required=True, metavar="ACTION")
    q = msub.add_parser("list", help="voters and learners of each group")
    _client_flags(q)
    q.set_defaults(func=cmd_member)
    q = msub.add_parser("add-learner", help="add node ID at HOST:PORT as a non-voting learner")
    q.add_argument("id", type=int)
    q.add_argument("endpoint", help="HOST:PORT of the new node (started with serve --join)")
    _client_flags(q)
    q.set_defaults(func=cmd_member)
    q = msub.add_parser(
        "replace",
        help="replace voter OLD by node NEW at HOST:PORT in one joint change (Raft only)",
    )
    q.add_argument("old", type=int, metavar="OLD_ID")
    q.add_argument("new", type=int, metavar="NEW_ID")
    q.add_argument("endpoint", metavar="ADDR", help="HOST:PORT of NEW (started with serve --join)")
    _add(q, "--catch-up-timeout", type=float, default=60.0, help="seconds NEW may take to catch up")
    _client_flags(q)
    q.set_defaults(func=cmd_member)
    for name, text in (
        ("promote", "make learner ID a voter"),
        ("demote", "make voter ID a learner (Raft only)"),
        ("remove", "remove node ID"),
    ):
        q = msub.add_parser(name, help=text)
        q.add_argument("id", type=int)
        _client_flags(q)
        q.set_defaults(func=cmd_member)

    for module in (
        "kvstore.cli_shard",
        "kvstore.cli_watch",
        "kvstore.security.cli",
        "kvstore.cli_node",
        "kvstore.cli_snapshot",
        "kvstore.cli_lease",
        "kvstore.bench.cli",
        "kvstore.jepsen.cli",
    ):
        # no ImportError guard: a command module that fails to import is a bug to see,
        # not a command that silently vanishes from --help
        __import__(module, fromlist=["register"]).register(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, unsafe_ack_before_commit: bool = False) -> int:
    """``unsafe_ack_before_commit``: serve acknowledges writes before they commit (it
    loses acknowledged writes). Only kvstore.jepsen.unsafe_node sets it: no flag, variable
    or config key of this command reaches it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _CONFIG.clear()
    _FLAGS.clear()
    path = _config_path(argv)
    if path:
        try:
            _CONFIG.update(load_config(path))
        except (OSError, ValueError) as e:
            print(f"kvstore: cannot read config {path}: {e}", file=sys.stderr)
            return EXIT_USAGE
    parser = build_parser()
    unknown = sorted(set(_CONFIG) - _FLAGS - {"config"})
    if unknown:
        names = ", ".join(k.replace("_", "-") for k in unknown)
        print(f"kvstore: config file {path}: unknown key(s) {names}", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    bad = _invalid_defaults(args)
    if bad:
        for message in bad:
            print(f"kvstore {args.command}: {message}", file=sys.stderr)
        return EXIT_USAGE
    args.unsafe_ack_before_commit = unsafe_ack_before_commit
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
