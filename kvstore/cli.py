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
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from kvstore.client._async import DEFAULT_ENDPOINTS

EXIT_OK = 0
EXIT_FALSE = 1
EXIT_USAGE = 2
EXIT_ERROR = 3


_CONFIG: dict[str, Any] = {}
"""Values from the --config TOML file, keyed by flag name with underscores."""
_FLAGS: set[str] = set()
"""Every flag name (underscores) that some command takes: what a config file may set."""


class _Invalid:
    """The default of a flag whose environment or config-file value is invalid: reported
    (exit 2) only when the chosen command has that flag and the command line does not
    set it, as a bad command-line value would be."""

    def __init__(self, message: str) -> None:
        self.message = message


def _env_name(flag: str) -> str:
    return "KVSTORE_" + flag.lstrip("-").upper().replace("-", "_")


def load_config(path: str) -> dict[str, Any]:
    import tomllib

    with open(path, "rb") as f:
        data = tomllib.load(f)
    return {k.replace("-", "_"): v for k, v in data.items()}


# -- value types: one check per flag, whatever the source ----------------------------
def _int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(s: str) -> int:
        try:
            v = int(s.strip())
        except ValueError:
            v = None
        if v is None or v < low or (high is not None and v > high):
            bound = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {s!r}")
        return v

    parse.__name__ = "integer"
    return parse


def _positive_float(s: str) -> float:
    try:
        v = float(s.strip())
    except ValueError:
        v = float("nan")
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {s!r}")
    return v


def _host_port(s: str) -> str:
    host, sep, port = s.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {s!r}")
    return s.strip()


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _flag_value(raw: Any, kw: dict[str, Any]) -> Any:
    """``raw`` (an environment string or a TOML value) checked and converted exactly as
    the command line's value would be; raises ValueError saying what is wrong."""
    if kw.get("action") == "store_true":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
            return raw.strip().lower() in _TRUE
        raise ValueError(f"expected true or false, got {raw!r}")
    if isinstance(raw, dict):  # TOML table: peers = {1 = "h:p", ...}
        raw = ",".join(f"{k}={v}" for k, v in raw.items())
    elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        raw = ",".join(raw)
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(f"expected a single value, got {raw!r}")
    convert = kw.get("type", str)
    try:
        value = convert(str(raw))
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise ValueError(str(e) or f"invalid value {raw!r}") from None
    choices = kw.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {raw!r}")
    return value


def _add(p: argparse.ArgumentParser, flag: str, *, required: bool = False, **kw: Any) -> None:
    """add_argument with the default taken, checked the same way as the command line,
    from KVSTORE_<FLAG> or else from the config file."""
    name = flag.lstrip("-").replace("-", "_")
    _FLAGS.add(name)
    env_name = _env_name(flag)
    env = os.environ.get(env_name)
    source, raw = (
        (f"environment variable {env_name}", env)
        if env is not None
        else (f"config file key {flag.lstrip('-')!r}", _CONFIG.get(name))
    )
    if raw is not None:
        try:
            kw["default"] = _flag_value(raw, kw)
        except ValueError as e:
            kw["default"] = _Invalid(f"{source}: {e}")
        required = False
    help_text = kw.pop("help", "")
    kw["help"] = f"{help_text} [env {env_name}]".strip()
    p.add_argument(flag, required=required, **kw)


def _invalid_defaults(args: argparse.Namespace) -> list[str]:
    return [v.message for v in vars(args).values() if isinstance(v, _Invalid)]


def _node_flags(p: argparse.ArgumentParser) -> None:
    _add(p, "--consensus", choices=("raft", "paxos"), default="raft", help="consensus core")
    _add(p, "--cluster-id", default="kvstore", help="cluster name checked on every peer message")
    _add(p, "--tick-ms", type=_int_at_least(1), default=50, help="consensus tick period in ms")
    _add(p, "--election-ticks", type=_int_at_least(2), default=10, help="election timeout in ticks")
    _add(
        p, "--heartbeat-ticks", type=_int_at_least(1), default=1, help="heartbeat interval in ticks"
    )
    _add(
        p,
        "--snapshot-entries",
        type=_int_at_least(0),
        default=10000,
        help="compact the log every N applied entries (0: never)",
    )
    _add(
        p,
        "--map-size-mb",
        type=_int_at_least(1),
        default=1024,
        help="LMDB map size (storage cap) in MiB",
    )
    _add(
        p,
        "--inline-persist",
        action="store_true",
        help="write to storage on the event loop thread (fewer thread hops; blocks the loop)",
    )
    _add(
        p,
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default="INFO",
        help="log threshold",
    )
    _add(
        p,
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="key=value lines, or one JSON object per line",
    )
    _add(
        p,
        "--shards",
        type=int,
        default=0,
        help="bootstrap a sharded cluster pre-split into K shards (0: one group, unsharded)",
    )
    _add(p, "--replicas", type=int, default=3, help="replicas per shard (sharded clusters)")
    _add(
        p,
        "--down-after",
        type=_positive_float,
        default=30.0,
        help="seconds a node must be judged down before its replicas are re-created "
        "elsewhere (sharded clusters)",
    )
    _add(
        p,
        "--split-keys",
        default="",
        help="comma-separated first keys of shards 2..K (default: spread over a..z)",
    )


def _client_flags(p: argparse.ArgumentParser) -> None:
    _add(
        p,
        "--endpoints",
        default=",".join(DEFAULT_ENDPOINTS),
        help="comma-separated HOST:PORT list of the cluster's nodes",
    )
    _add(
        p,
        "--timeout",
        type=_positive_float,
        default=5.0,
        help="seconds per operation, retries included",
    )
    # dest: `get KEY` has a positional named key.
    _add(
        p,
        "--cacert",
        dest="tls_cacert",
        default="",
        help="CA certificate (PEM) that signed the nodes' certificates",
    )
    _add(p, "--cert", dest="tls_cert", default="", help="this client's certificate (PEM)")
    _add(p, "--key", dest="tls_key", default="", help="this client's private key (PEM)")


def _tls_flags(p: argparse.ArgumentParser) -> None:
    """etcd's flags (README "TLS and access control"; kvstore/security/tls.py)."""
    _add(p, "--cert-file", default="", help="certificate (PEM) the port serves to clients")
    _add(p, "--key-file", default="", help="private key of --cert-file")
    _add(p, "--trusted-ca-file", default="", help="CA whose client certificates are accepted")
    _add(
        p,
        "--client-cert-auth",
        action="store_true",
        help="require client certificates (always on with TLS: peers share the port)",
    )
    _add(p, "--peer-cert-file", default="", help="this node's certificate (names node-<id>)")
    _add(p, "--peer-key-file", default="", help="private key of --peer-cert-file")
    _add(p, "--peer-trusted-ca-file", default="", help="CA that signs the nodes' certificates")


def _tls_files(args: argparse.Namespace) -> Any:
    from kvstore.security.tls import TLSFiles

    return TLSFiles(
        cert_file=args.cert_file,
        key_file=args.key_file,
        trusted_ca_file=args.trusted_ca_file,
        client_cert_auth=args.client_cert_auth,
        peer_cert_file=args.peer_cert_file,
        peer_key_file=args.peer_key_file,
        peer_trusted_ca_file=args.peer_trusted_ca_file,
    )


# -- serve / cluster -------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from kvstore.node import log
    from kvstore.server.process import ServeOptions, StartupError, parse_peers, run

    log.setup(args.log_level, args.id, args.log_format)
    try:
        peers = parse_peers(args.peers or "")
    except ValueError as e:
        print(f"kvstore serve: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        opts = ServeOptions(
            id=args.id,
            listen=args.listen,
            peers=peers,
            data_dir=args.data_dir,
            metrics_port=args.metrics_port,
            consensus=args.consensus,
            cluster_id=args.cluster_id,
            tick_ms=args.tick_ms,
            election_ticks=args.election_ticks,
            heartbeat_ticks=args.heartbeat_ticks,
            snapshot_entries=args.snapshot_entries,
            map_size_mb=args.map_size_mb,
            unsafe_ack_before_commit=getattr(args, "unsafe_ack_before_commit", False),
            join=args.join,
            inline_persist=args.inline_persist,
            shards=args.shards,
            replicas=args.replicas,
            split_keys=_split_keys(args.split_keys),
            tls=_tls_files(args),
            down_after=args.down_after,
        )
    except ValueError as e:
        print(f"kvstore serve: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        ok = run(opts)
    except StartupError as e:
        print(f"kvstore serve: {e}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK if ok else EXIT_ERROR


def _split_keys(spec: str) -> tuple[bytes, ...] | None:
    return tuple(k.encode() for k in spec.split(",")) if spec else None


def _serve_argv(args: argparse.Namespace, i: int, peers: str) -> list[str]:
    node_dir = os.path.join(args.data_dir, f"node{i}")
    argv = [
        sys.executable,
        "-m",
        "kvstore.cli",
        "serve",
        "--id",
        str(i),
        "--listen",
        f"{args.host}:{args.port + i - 1}",
        "--peers",
        peers,
        "--data-dir",
        node_dir,
        "--consensus",
        args.consensus,
        "--cluster-id",
        args.cluster_id,
        "--tick-ms",
        str(args.tick_ms),
        "--election-ticks",
        str(args.election_ticks),
        "--heartbeat-ticks",
        str(args.heartbeat_ticks),
        "--snapshot-entries",
        str(args.snapshot_entries),
        "--map-size-mb",
        str(args.map_size_mb),
        "--log-level",
        args.log_level,
        "--log-format",
        args.log_format,
    ]
    if args.inline_persist:
        argv.append("--inline-persist")
    if args.shards:
        argv += ["--shards", str(args.shards), "--replicas", str(args.replicas)]
        argv += ["--down-after", str(args.down_after)]
        if args.split_keys:
            argv += ["--split-keys", args.split_keys]
    if args.metrics_port:
        argv += ["--metrics-port", str(args.metrics_port + i - 1)]
    if args.tls:
        from kvstore.security.certs import serve_flags

        argv += serve_flags(os.path.join(args.data_dir, "certs"), i)
    return argv


def cmd_cluster(args: argparse.Namespace) -> int:
    n = args.nodes
    if n < 1:
        print("kvstore cluster: --nodes must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    peers = ",".join(f"{i}={args.host}:{args.port + i - 1}" for i in range(1, n + 1))
    os.makedirs(args.data_dir, exist_ok=True)
    cert_dir = os.path.join(args.data_dir, "certs")
    if args.tls:
        from kvstore.security import certs

        try:
            certs.init(cert_dir, n, [args.host])
        except (OSError, ValueError) as e:
            print(f"kvstore cluster: cannot make certificates in {cert_dir}: {e}", file=sys.stderr)
            return EXIT_ERROR
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    log_dir = os.path.join(args.data_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    for i in range(1, n + 1):
        logf = open(os.path.join(log_dir, f"node{i}.log"), "ab")  # noqa: SIM115 - child owns it
        procs.append(
            subprocess.Popen(
                _serve_argv(args, i, peers),
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        logf.close()
    endpoints = ",".join(f"{args.host}:{args.port + i - 1}" for i in range(1, n + 1))
    shards = f", {args.shards} shards" if args.shards else ""
    print(f"kvstore cluster: {n} nodes ({args.consensus}{shards}), data in {args.data_dir}")
    for i in range(1, n + 1):
        extra = f"  metrics :{args.metrics_port + i - 1}" if args.metrics_port else ""
        print(f"  node {i}: {args.host}:{args.port + i - 1}{extra}")
    print(f"endpoints: {endpoints}")
    if args.tls:
        from kvstore.security.certs import client_flags

        print(f"TLS: certificates in {cert_dir}; clients (admin role) add:")
        print("  " + " ".join(client_flags(cert_dir)))
        print("  (read/write role: client.pem and client-key.pem)")
    print(f"logs: {log_dir}/node*.log; Ctrl-C stops all nodes")
    sys.stdout.flush()
    code = EXIT_OK
    while not stopping:
        for i, p in enumerate(procs, 1):
            if p.poll() is not None:
                print(f"kvstore cluster: node {i} exited with {p.returncode}", file=sys.stderr)
                stopping = True
                code = EXIT_ERROR
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    print("kvstore cluster: stopped")
    return code


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
        rev = c.put(args.key, args.value)
        print(f"OK revision={rev}")
        return EXIT_OK

    return _with_client(args, f)


def cmd_get(args: argparse.Namespace) -> int:
    def f(c: Any) -> int:
        value = c.get(args.key, read_mode=args.read_mode)
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

    p = sub.add_parser("serve", help="run one node")
    p.add_argument("--config", help="TOML file of flag values [env KVSTORE_CONFIG]")
    _add(p, "--id", type=_int_at_least(1), required=True, help="this node's id (>= 1)")
    _add(p, "--listen", type=_host_port, required=True, help="HOST:PORT for clients and peers")
    _add(p, "--peers", default="", help="ID=HOST:PORT,... of all nodes (this one may be listed)")
    _add(p, "--data-dir", required=True, help="directory of this node's LMDB environment")
    _add(
        p,
        "--metrics-port",
        type=_int_at_least(0, 65535),
        default=0,
        help="Prometheus metrics HTTP port (0: off)",
    )
    _add(
        p,
        "--join",
        action="store_true",
        help="new node joining a running cluster: no bootstrap, wait for `member add-learner`",
    )
    _node_flags(p)
    _tls_flags(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("cluster", help="run a local N-node cluster until Ctrl-C")
    _add(p, "--nodes", type=_int_at_least(1), default=3, help="number of nodes")
    _add(
        p,
        "--port",
        type=_int_at_least(1, 65535),
        default=7001,
        help="first port; node i listens on PORT+i-1",
    )
    _add(p, "--host", default="127.0.0.1", help="address to listen on")
    _add(p, "--data-dir", default="./kvstore-data", help="data root (node i in DIR/nodeI)")
    _add(
        p,
        "--metrics-port",
        type=_int_at_least(0, 65535),
        default=0,
        help="first metrics port; node i serves on METRICS_PORT+i-1 (0: off)",
    )
    _add(
        p,
        "--tls",
        action="store_true",
        help="mutual TLS with certificates in DATA_DIR/certs (made if absent)",
    )
    _node_flags(p)
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("put", help="write KEY=VALUE")
    p.add_argument("key")
    p.add_argument("value")
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
        "kvstore.security.cli",
        "kvstore.cli_node",
        "kvstore.cli_snapshot",
        "kvstore.bench.cli",
        "kvstore.jepsen.cli",
    ):
        try:
            mod = __import__(module, fromlist=["register"])
        except ImportError:
            continue
        register = getattr(mod, "register", None)
        if register is not None:
            register(sub)
    return parser


def _config_path(argv: Sequence[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return os.environ.get("KVSTORE_CONFIG")


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
