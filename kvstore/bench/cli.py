"""`kvstore bench` (also `python -m kvstore.bench`): the closed-loop load generator.

Rule this module keeps: command-line parsing and printing only; the run itself is
kvstore.bench.runner.run, which the etcd comparison calls the same way. Progress goes to
stderr once a second; the result goes to stdout (and to --json FILE).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from kvstore.bench.histogram import Histogram
from kvstore.bench.report import write_json
from kvstore.bench.runner import BenchError, ProgressFn, run, run_preload
from kvstore.bench.workload import READ_MODES, TARGETS, WorkloadSpec


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoints",
        default="127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
        help="comma-separated host:port list (default: the `kvstore cluster` ports)",
    )
    p.add_argument(
        "--target",
        choices=TARGETS,
        default="kvstore",
        help="store to drive: kvstore, an etcd v3 cluster for comparison, or null (answers "
        "at once in memory: the generator's own ceiling)",
    )
    p.add_argument("--clients", type=int, default=64, help="concurrent requests (default 64)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    p.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds of load before measuring starts (default 1)",
    )
    p.add_argument("--value-size", type=int, default=256, help="value bytes (default 256)")
    p.add_argument("--keys", type=int, default=1000, help="size of the key space (default 1000)")
    p.add_argument(
        "--read-ratio",
        type=float,
        default=0.0,
        help="fraction of requests that are reads, 0..1 (default 0: all writes)",
    )
    p.add_argument(
        "--read-mode",
        choices=READ_MODES,
        default="strong",
        help="read consistency (default strong)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="load processes sharing the clients, so one Python process is not "
        "the bottleneck (default 1)",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout, seconds")
    p.add_argument(
        "--no-preload",
        action="store_true",
        help="do not write every key once before a workload with reads",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of keys, values and choices")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE")
    p.add_argument("--quiet", action="store_true", help="no per-second progress on stderr")
    for flag, what in (
        ("cacert", "CA certificate (PEM) of the nodes"),
        ("cert", "client certificate (PEM)"),
        ("key", "client private key (PEM)"),
    ):
        env = f"KVSTORE_{flag.upper()}"
        p.add_argument(
            f"--{flag}",
            dest=f"tls_{flag}",
            default=os.environ.get(env, ""),
            help=f"TLS: {what} (kvstore target) [env {env}]",
        )


def register(subparsers: Any) -> None:
    """Add the `bench` subcommand to kvstore's CLI."""
    p = subparsers.add_parser(
        "bench",
        help="measure throughput and latency with a closed-loop load",
        description="Closed-loop load generator: --clients requests in flight for --duration "
        "seconds; prints throughput and latency percentiles.",
    )
    add_arguments(p)
    p.set_defaults(func=bench_command)


def spec_from_args(args: argparse.Namespace) -> WorkloadSpec:
    return WorkloadSpec(
        clients=args.clients,
        duration_s=args.duration,
        warmup_s=args.warmup,
        value_size=args.value_size,
        keys=args.keys,
        read_ratio=args.read_ratio,
        read_mode=args.read_mode,
        seed=args.seed,
    ).validate()


def progress_printer(label: str, total_s: float, stream: TextIO = sys.stderr) -> ProgressFn:
    """A progress callback that prints one line a second: this second's rate and p99."""

    def show(
        second: int, measuring: bool, ops: int, errors: int, hist: Histogram, so_far: Histogram
    ) -> None:
        phase = "measure" if measuring else "warmup "
        p99 = hist.percentile_us(99) / 1000.0
        overall = (
            f"  p99 so far {so_far.percentile_us(99) / 1000.0:7.2f} ms" if so_far.count else ""
        )
        err = f"  errors {errors}" if errors else ""
        stream.write(
            f"  [{label} {second:>3}/{total_s:.0f}s {phase}] {ops:>9,} ops/s  "
            f"p99 {p99:7.2f} ms{overall}{err}\n"
        )
        stream.flush()

    return show


def bench_command(args: argparse.Namespace) -> int:
    try:
        spec = spec_from_args(args)
        if args.processes < 1:
            raise ValueError(f"--processes must be >= 1, got {args.processes}")
    except ValueError as e:
        print(f"kvstore bench: {e}", file=sys.stderr)
        return 2
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    for flag in ("cacert", "cert", "key"):  # the load processes read them (kvstore_target)
        value = getattr(args, f"tls_{flag}", "")
        if value:
            os.environ[f"KVSTORE_{flag.upper()}"] = value
    print(f"# {args.target} @ {','.join(endpoints)}: {spec.describe()}", file=sys.stderr)
    try:
        if spec.read_ratio > 0 and not args.no_preload:
            pre = run_preload(args.target, endpoints, spec, args.timeout)
            print(f"# {pre.describe()}", file=sys.stderr)
        progress = (
            None if args.quiet else progress_printer(args.target, spec.warmup_s + spec.duration_s)
        )
        result = run(
            args.target,
            endpoints,
            spec,
            processes=args.processes,
            timeout_s=args.timeout,
            progress=progress,
        )
    except (BenchError, OSError, ValueError) as e:
        print(f"kvstore bench: {e}", file=sys.stderr)
        return 1
    print(result.format_text())
    if args.json:
        write_json(args.json, result.to_dict())
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kvstore.bench", description=__doc__)
    add_arguments(p)
    return bench_command(p.parse_args(argv))
