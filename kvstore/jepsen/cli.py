"""``kvstore jepsen``: ``run`` a fault test, ``campaign`` many, ``check`` a history, ``clean``.

Exit codes: ``check``: 0 linearizable, 1 not, 2 unreadable input, 3 unknown (the search ran
past ``--timeout``; it prints which keys it decided). ``run``: 0 valid, 1 anomaly found,
2 harness failure. ``campaign`` (see :mod:`kvstore.jepsen.campaign`): 0 every run valid,
1 an anomaly found, 2 otherwise.
``kvstore.cli`` calls :func:`register`; ``python -m kvstore.jepsen.cli`` works on its own.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvstore.jepsen.formats import FORMATS
from kvstore.jepsen.nemesis import KINDS

WORKLOADS = ("register", "append", "session", "lock", "watch")


def _check(args: argparse.Namespace) -> int:
    from kvstore.jepsen.checker.linearizable import check
    from kvstore.jepsen.formats import load
    from kvstore.jepsen.history import HistoryError, pair

    path = Path(args.history)
    try:
        loaded = load(path, args.format)
        ops = pair(loaded.events)
    except HistoryError as e:
        print(f"kvstore jepsen check: unreadable history: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"kvstore jepsen check: cannot read {path}: {e.strerror or e}", file=sys.stderr)
        return 2
    result = check(
        ops,
        loaded.model,
        timeout=args.timeout,
        workers=args.workers,
        shrink_budget=args.shrink_budget,
    )
    print(
        f"{path}: {result.verdict} ({loaded.format}, model {loaded.model.name}, "
        f"{result.ops} operations, {result.keys} keys, {result.seconds:.3f}s)"
    )
    for failure in result.failures:
        key = "" if failure.key is None else f"key {failure.key!r}: "
        print(f"  {key}these {len(failure.window)} operations cannot be ordered:")
        for op in failure.window:
            print(f"    {op.describe()}")
        print(f"  longest linearizable prefix found: {len(failure.longest)} operations")
    if result.stopped_keys:
        print(f"  not searched after that failure: {len(result.stopped_keys)} keys")
    if result.timed_out_keys:
        decided = ", ".join(map(str, result.checked_keys)) or "none"
        print(f"  search ran out of time ({args.timeout}s): verdict unknown")
        print(f"  linearizable: {len(result.checked_keys)} keys ({decided})")
        print(
            f"  undecided: {len(result.timed_out_keys)} keys "
            f"({', '.join(map(str, result.timed_out_keys))})"
        )
    if result.verdict == "linearizable":
        return 0
    return 1 if result.failures else 3


def _run(args: argparse.Namespace) -> int:
    from kvstore.jepsen.runner import RunConfig, run_cli

    config = RunConfig(
        nodes=args.nodes,
        consensus=args.consensus,
        workload=args.workload,
        nemesis=args.nemesis,
        time_limit=args.time_limit,
        concurrency=args.concurrency,
        read_mode=args.read_mode,
        seed=args.seed,
        out=Path(args.out) if args.out else None,
        keys=args.keys,
        interval=args.nemesis_interval,
        unsafe_ack=args.unsafe_ack_before_commit,
        server_cmd=args.server_cmd,
        shards=args.shards,
        replicas=args.replicas,
        tls=args.tls,
        hosts=args.hosts,
        **_deployment_timeouts(args.hosts),
    )
    return run_cli(config)


def _deployment_timeouts(hosts: str) -> dict[str, float]:
    """VM nodes run 25-30x slower under emulation: longer client deadlines and recovery."""
    if hosts == "vms":
        return {"op_timeout": 10.0, "recovery": 600.0}
    if hosts == "compose":
        return {"recovery": 120.0}
    return {}


def _list(text: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"{what}: {', '.join(bad) or 'none given'}; choose from {', '.join(allowed)}"
        )
    return items


def _campaign(args: argparse.Namespace) -> int:
    from kvstore.jepsen.campaign import CampaignConfig, exit_code, run_campaign
    from kvstore.jepsen.runner import RunConfig, run

    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        cfg = CampaignConfig(
            runs=args.runs,
            nemeses=_list(args.nemesis, sorted(KINDS), "unknown nemesis"),
            cores=_list(args.consensus, ("raft", "paxos"), "unknown consensus"),
            workloads=_list(args.workload, WORKLOADS, "unknown workload"),
            time_limit=args.time_limit,
            out=Path(args.out or time.strftime("jepsen-campaign-%Y%m%d-%H%M%S")),
            seed=args.seed,
            stop_on_anomaly=args.stop_on_anomaly,
            base=RunConfig(
                nodes=args.nodes,
                concurrency=args.concurrency,
                interval=args.nemesis_interval,
                shards=args.shards,
                replicas=args.replicas,
            ),
        )
    except argparse.ArgumentTypeError as e:
        print(f"kvstore jepsen campaign: {e}", file=sys.stderr)
        return 2
    try:
        rows = run_campaign(cfg, run, progress=lambda s: print(s, flush=True))
    except KeyboardInterrupt:
        print("kvstore jepsen campaign: interrupted (summary of the runs done is written)")
        return 2
    code = exit_code(rows)
    bad = sum(r.verdict == "invalid" for r in rows)
    print(f"campaign: {len(rows)} runs, {bad} with anomalies; index: {cfg.out / 'index.html'}")
    return code


def _clean(args: argparse.Namespace) -> int:
    from kvstore.jepsen.hosts import HarnessError, clean_leftovers, run_lock

    # Under the run lock: cleaning while a run is starting would pull its hosts away.
    try:
        with run_lock():
            for line in clean_leftovers():
                print(line)
    except HarnessError as e:
        print(f"kvstore jepsen clean: {e}", file=sys.stderr)
        return 2
    return 0


def _add_commands(sub: Any) -> None:
    chk = sub.add_parser("check", help="check a history for linearizability")
    chk.add_argument("history", help="history file")
    chk.add_argument("--format", choices=FORMATS, default="auto")
    chk.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds for the whole search; past it the verdict is unknown (exit 3)",
    )
    chk.add_argument(
        "--workers", type=int, default=None, help="processes searching keys (default: CPUs)"
    )
    chk.add_argument(
        "--shrink-budget",
        type=float,
        default=2.0,
        help="seconds to shrink a failure to a small window (within --timeout)",
    )
    chk.set_defaults(func=_check)

    run = sub.add_parser("run", help="run a cluster under faults and check what clients saw")
    run.add_argument("--nodes", type=int, default=5)
    run.add_argument("--consensus", choices=("raft", "paxos"), default="raft")
    run.add_argument("--workload", choices=WORKLOADS, default="register")
    run.add_argument(
        "--nemesis",
        choices=tuple(KINDS),
        default="none",
    )
    run.add_argument("--time-limit", type=float, default=60.0, help="seconds of workload")
    run.add_argument("--concurrency", type=int, default=10, help="client processes")
    run.add_argument("--read-mode", choices=("strong", "eventual", "causal"), default=None)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--out", default=None, help="report directory (default: a new one)")
    run.add_argument("--keys", type=int, default=None, help="keys the workload spreads over")
    run.add_argument(
        "--nemesis-interval", type=float, default=5.0, help="mean seconds between faults"
    )
    run.add_argument(
        "--unsafe-ack-before-commit",
        action="store_true",
        help="start nodes that ack before commit (kvstore.jepsen.unsafe_node; proof of detection)",
    )
    run.add_argument(
        "--server-cmd",
        default=None,
        help="command that runs one node (default: this python -m kvstore.cli serve)",
    )
    run.add_argument(
        "--shards",
        type=int,
        default=0,
        help="start the cluster pre-split into K shards (0: one unsharded group)",
    )
    run.add_argument("--replicas", type=int, default=3, help="replicas per shard (with --shards)")
    run.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS between nodes and clients (certificates in OUT/certs)",
    )
    run.add_argument(
        "--hosts",
        choices=("netns", "compose", "vms"),
        default="netns",
        help="netns: namespaces made here; compose: the docker-compose cluster (docker "
        "kill/pause, partitions on its network); vms: deploy/vm.sh (virsh destroy/suspend, "
        "partitions on its bridge)",
    )
    run.set_defaults(func=_run)

    camp = sub.add_parser("campaign", help="many seeded runs one after another, one index page")
    camp.add_argument("--runs", type=int, default=20, help="runs per nemesis and core")
    camp.add_argument("--nemesis", default="partition", help="comma-separated nemeses")
    camp.add_argument("--consensus", default="raft,paxos", help="comma-separated cores")
    camp.add_argument("--workload", default="register", help="comma-separated, used in turn")
    camp.add_argument("--time-limit", type=float, default=30.0, help="seconds of workload a run")
    camp.add_argument("--out", default=None, help="campaign directory (default: a new one)")
    camp.add_argument("--seed", type=int, default=1, help="seed of the first run of each pair")
    camp.add_argument("--stop-on-anomaly", action="store_true", help="stop at the first anomaly")
    camp.add_argument("--nodes", type=int, default=5)
    camp.add_argument("--concurrency", type=int, default=10)
    camp.add_argument("--nemesis-interval", type=float, default=5.0)
    camp.add_argument("--shards", type=int, default=0, help="pre-split every run's cluster")
    camp.add_argument("--replicas", type=int, default=3, help="replicas per shard (with --shards)")
    camp.set_defaults(func=_campaign)

    clean = sub.add_parser("clean", help="remove namespaces, bridge, rules and processes left over")
    clean.set_defaults(func=_clean)


def register(subparsers: Any) -> None:
    """Adds ``jepsen`` to ``kvstore``'s subcommands."""
    p = subparsers.add_parser("jepsen", help="Jepsen-style fault tests and history checking")
    _add_commands(p.add_subparsers(dest="jepsen_command", required=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvstore jepsen", description=__doc__)
    _add_commands(parser.add_subparsers(dest="jepsen_command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
