"""Times `kvstore jepsen check` against Porcupine on the same histories, side by side.

    PORCUPINE_SRC=/path/to/porcupine python benchmarks/checker_vs_porcupine.py [--timeout 60]

Histories: Porcupine's published kv ones (tests/jepsen/porcupine/kv) and hard cases from
tests/jepsen/hardgen.py (50 and 100 clients, 10,000 operations over 10 keys, valid and with
one stale read injected). Porcupine runs through benchmarks/porcupine/run.sh (Go, built
against the fetched copy). Prints a markdown table: verdicts and seconds of both. Our time
is the search as the command reports it and the whole command (parsing included).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.jepsen.hardgen import kv_lines  # noqa: E402

CASES = [
    # (name, seed, clients, ops, anomaly)
    ("gen c50 n10000 s1 valid", 1, 50, 10_000, None),
    ("gen c50 n10000 s1 stale", 1, 50, 10_000, "stale"),
    ("gen c50 n10000 s2 valid", 2, 50, 10_000, None),
    ("gen c50 n10000 s2 stale", 2, 50, 10_000, "stale"),
    ("gen c100 n10000 s3 valid", 3, 100, 10_000, None),
    ("gen c100 n10000 s3 stale", 3, 100, 10_000, "stale"),
    ("gen c20 n600 one key s5 valid", 5, 20, 600, None),
    ("gen c20 n600 one key s5 stale", 5, 20, 600, "stale"),
]


def ours(path: Path, timeout: float) -> tuple[str, float, float]:
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "kvstore.jepsen.cli", "check", str(path), "--timeout", str(timeout)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    wall = time.monotonic() - t0
    m = re.search(r": (\S+) \(.*, ([0-9.]+)s\)", done.stdout)
    if m is None:
        raise RuntimeError(f"unexpected output: {done.stdout} {done.stderr}")
    return m[1], float(m[2]), wall


def porcupine(path: Path, timeout: float) -> tuple[str, float]:
    done = subprocess.run(
        [str(ROOT / "benchmarks/porcupine/run.sh"), "-timeout", f"{timeout}s", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    _, verdict, seconds = done.stdout.split("\n")[0].split("\t")
    return verdict, float(seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args()
    if not os.environ.get("PORCUPINE_SRC"):
        sys.exit("set PORCUPINE_SRC to a checkout of github.com/anishathalye/porcupine")
    with tempfile.TemporaryDirectory() as tmp:
        files: list[tuple[str, Path]] = []
        for name in ("c01-ok", "c01-bad", "c10-ok", "c10-bad", "c50-ok", "c50-bad"):
            files.append((f"Porcupine {name}", ROOT / "tests/jepsen/porcupine/kv" / f"{name}.txt"))
        for name, seed, clients, n, anomaly in CASES:
            path = Path(tmp) / (name.replace(" ", "-") + ".txt")
            keys = 1 if "one key" in name else 10
            lines = kv_lines(seed, clients=clients, ops=n, keys=keys, anomaly=anomaly)
            path.write_text("\n".join(lines))
            files.append((name, path))
        print(
            "| history | ops | Porcupine verdict | Porcupine s | our verdict | our search s |"
            " our command s |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, path in files:
            n_ops = sum(1 for line in path.read_text().splitlines() if ":invoke" in line)
            pv, ps = porcupine(path, args_timeout := a.timeout)
            ov, osearch, owall = ours(path, args_timeout)
            flag = "" if pv == ov or "unknown" in (pv, ov) else " **DISAGREE**"
            print(
                f"| {name} | {n_ops} | {pv} | {ps:.3f} | {ov}{flag} | {osearch:.3f} | {owall:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
