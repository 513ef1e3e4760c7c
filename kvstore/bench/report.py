"""Results of a benchmark run: merged from the load processes, printed and saved as JSON.

Rule this module keeps: every number it prints is computed from the merged histograms and
counters of all load processes (never an average of per-process percentiles). No I/O
except `write_json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvstore.bench.histogram import Histogram
from kvstore.bench.workload import WorkloadSpec


@dataclass(slots=True, kw_only=True)
class OpStats:
    """Successful operations of one kind and their latencies, plus failures by error name
    and how long the failures took (a fast refusal and a timeout mean different things)."""

    ops: int = 0
    hist: Histogram = field(default_factory=Histogram)
    errors: dict[str, int] = field(default_factory=dict)
    error_hist: Histogram = field(default_factory=Histogram)

    def merge(self, other: OpStats) -> None:
        self.ops += other.ops
        self.hist.merge(other.hist)
        self.error_hist.merge(other.error_hist)
        for name, n in other.errors.items():
            self.errors[name] = self.errors.get(name, 0) + n

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "ops": self.ops,
            "errors": dict(self.errors),
            "histogram": self.hist.to_dict(),
            "error_histogram": self.error_hist.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OpStats:
        return cls(
            ops=int(d["ops"]),
            errors={str(k): int(v) for k, v in d.get("errors", {}).items()},
            hist=Histogram.from_dict(d["histogram"]),
            error_hist=Histogram.from_dict(d.get("error_histogram", {})),
        )


@dataclass(slots=True, kw_only=True)
class BenchResult:
    target: str
    endpoints: list[str]
    spec: WorkloadSpec
    processes: int
    measured_s: float
    reads: OpStats = field(default_factory=OpStats)
    writes: OpStats = field(default_factory=OpStats)
    # CPU seconds of the load generator in the measured window (all load processes).
    load_cpu_s: float = 0.0
    # CPU seconds of the whole generator run (getrusage of itself + its children).
    total_cpu_s: float = 0.0
    # Retries inside the store's client in the measured window: "requests" retried, and
    # failed attempts by reason (kvstore: not leader, stream broken, no answer, ...).
    retries: dict[str, int] = field(default_factory=dict)

    @property
    def all_ops(self) -> OpStats:
        s = OpStats()
        s.merge(self.reads)
        s.merge(self.writes)
        return s

    @property
    def throughput(self) -> float:
        return self.all_ops.ops / self.measured_s if self.measured_s > 0 else 0.0

    @property
    def load_cores(self) -> float:
        """Cores the load processes kept busy in the measured window (2.0 = two cores)."""
        return self.load_cpu_s / self.measured_s if self.measured_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """The headline numbers, flat and JSON-ready (latencies in milliseconds)."""
        a = self.all_ops
        return {
            "target": self.target,
            "workload": self.spec.describe(),
            "clients": self.spec.clients,
            "read_ratio": self.spec.read_ratio,
            "read_mode": self.spec.read_mode,
            "processes": self.processes,
            "ops": a.ops,
            "errors": a.error_count,
            "throughput": round(self.throughput, 1),
            "p50_ms": ms(a.hist.percentile_us(50)),
            "p99_ms": ms(a.hist.percentile_us(99)),
            "p999_ms": ms(a.hist.percentile_us(99.9)),
            "max_ms": ms(a.hist.max_us),
            "mean_ms": round(a.hist.mean_us() / 1000.0, 3),
            "load_cpu_s": round(self.load_cpu_s, 2),
            "load_cores": round(self.load_cores, 2),
            "total_cpu_s": round(self.total_cpu_s, 2),
            "retried": self.retries.get("requests", 0),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "endpoints": self.endpoints,
            "spec": {
                "clients": self.spec.clients,
                "duration_s": self.spec.duration_s,
                "warmup_s": self.spec.warmup_s,
                "value_size": self.spec.value_size,
                "keys": self.spec.keys,
                "read_ratio": self.spec.read_ratio,
                "read_mode": self.spec.read_mode,
                "seed": self.spec.seed,
            },
            "measured_s": self.measured_s,
            "reads": self.reads.to_dict(),
            "writes": self.writes.to_dict(),
            "retries": dict(self.retries),
        }

    def format_text(self) -> str:
        s = self.summary()
        lines = [
            f"{self.target} @ {','.join(self.endpoints)}: {self.spec.describe()}, "
            f"{self.processes} load process(es)",
            f"  throughput  {s['throughput']:>12,.1f} ops/s  ({s['ops']:,} ops in "
            f"{self.measured_s:.2f}s, {s['errors']:,} errors)",
            f"  latency     p50 {s['p50_ms']:.2f} ms   p99 {s['p99_ms']:.2f} ms   "
            f"p99.9 {s['p999_ms']:.2f} ms   max {s['max_ms']:.2f} ms",
        ]
        for name, part in (("reads", self.reads), ("writes", self.writes)):
            if part.ops and self.reads.ops and self.writes.ops:
                lines.append(
                    f"  {name:<11} {part.ops / self.measured_s:>12,.1f} ops/s  p50 "
                    f"{ms(part.hist.percentile_us(50)):.2f} ms   p99 "
                    f"{ms(part.hist.percentile_us(99)):.2f} ms"
                )
        every = self.all_ops
        if every.errors:
            eh = every.error_hist
            lines.append(
                "  errors      "
                + ", ".join(f"{k}: {v}" for k, v in sorted(every.errors.items()))
                + f"  (failed after p50 {ms(eh.percentile_us(50)):.2f} ms, "
                f"max {ms(eh.max_us):.2f} ms)"
            )
        retried = format_retries(self.retries)
        if retried:
            lines.append(f"  retries     {retried}")
        lines.append(
            f"  generator   {s['load_cores']:.2f} cores busy while measuring "
            f"({s['load_cpu_s']:.1f} CPU-s); {s['total_cpu_s']:.1f} CPU-s in all"
        )
        return "\n".join(lines)


def format_retries(retries: dict[str, int]) -> str:
    """ "12 requests retried (no answer: 3, stream broken: 9)", or "" when none were."""
    n = retries.get("requests", 0)
    why = {k: v for k, v in retries.items() if k != "requests" and v}
    if not n and not why:
        return ""
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(why.items()))
    return f"{n:,} requests retried" + (f" ({reasons})" if reasons else "")


def ms(us: int) -> float:
    return round(us / 1000.0, 3)


def write_json(path: str | Path, payload: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(p)
