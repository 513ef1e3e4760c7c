"""`kvstore serve` (one node) and `kvstore cluster` (a local N-node cluster)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any

from kvstore.cli_flags import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    _add,
    _host_port,
    _int_at_least,
    _node_flags,
    _tls_files,
    _tls_flags,
)


def cmd_serve(args: argparse.Namespace) -> int:
    from kvstore.server.process import ServeOptions, StartupError, parse_peers, run

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
            snapshot_log_mb=args.snapshot_log_mb,
            map_size_mb=args.map_size_mb,
            unsafe_ack_before_commit=getattr(args, "unsafe_ack_before_commit", False),
            join=args.join,
            inline_persist=args.inline_persist,
            shards=args.shards,
            replicas=args.replicas,
            split_keys=_split_keys(args.split_keys),
            tls=_tls_files(args),
            down_after=args.down_after,
            split_size=args.split_size,
            split_key_count=args.split_key_count,
            history_revisions=args.history_revisions,
            log_level=args.log_level,
            log_format=args.log_format,
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
        "--snapshot-log-mb",
        str(args.snapshot_log_mb),
        "--map-size-mb",
        str(args.map_size_mb),
        "--log-level",
        args.log_level,
        "--log-format",
        args.log_format,
    ]
    if args.inline_persist:
        argv.append("--inline-persist")
    argv += ["--history-revisions", str(args.history_revisions)]
    if args.shards:
        argv += ["--shards", str(args.shards), "--replicas", str(args.replicas)]
        argv += ["--down-after", str(args.down_after)]
        argv += ["--split-size", str(args.split_size)]
        argv += ["--split-key-count", str(args.split_key_count)]
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


def register(sub: Any) -> None:
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
