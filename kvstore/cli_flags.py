"""Flags of every `kvstore` command: how a value is found, checked and reported.

Every flag can also come from an environment variable KVSTORE_<FLAG> (``--data-dir``
-> KVSTORE_DATA_DIR) or from a TOML file given with ``--config FILE`` (KVSTORE_CONFIG),
whose keys are the flag names (``data-dir = "/var/lib/kvstore"`` or ``data_dir``).
Precedence: command line, then environment, then the file, then the default.

Invariant: a bad environment or file value never fails a command that does not take
that flag; it is reported (exit 2) by the command that does, as a bad command-line value.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

from kvstore.client._async import DEFAULT_ENDPOINTS
from kvstore.shard.split import DEFAULT_SPLIT_KEY_COUNT, DEFAULT_SPLIT_SIZE
from kvstore.storage.history import DEFAULT_HISTORY_REVISIONS

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
        "--snapshot-log-mb",
        type=_int_at_least(0),
        default=32,
        help="also compact the log once the entries applied since the last compaction "
        "hold this many MiB (0: never); a follower further behind gets a snapshot",
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
    _add(
        p,
        "--split-size",
        type=_int_at_least(0),
        default=DEFAULT_SPLIT_SIZE,
        help="split a shard automatically at the middle of its data once its keys and "
        "values pass this many bytes (0: never; sharded clusters)",
    )
    _add(
        p,
        "--split-key-count",
        type=_int_at_least(0),
        default=DEFAULT_SPLIT_KEY_COUNT,
        help="split a shard automatically once it holds more than this many keys "
        "(0: never; sharded clusters)",
    )
    _add(
        p,
        "--history-revisions",
        type=_int_at_least(0),
        default=DEFAULT_HISTORY_REVISIONS,
        help="revisions of history each shard keeps for get --rev and watch (0: all, "
        "until kvstore compact)",
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


def _config_path(argv: Sequence[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return os.environ.get("KVSTORE_CONFIG")
