"""Prints a kvstore cluster's status and, with --wait, waits until every group has a leader.

    python deploy/cluster-status.py 10.37.0.11:7001,10.37.0.12:7001 [--wait 600]

Exit status 0 when every consensus group seen has a leader that a reachable node reports,
3 otherwise (after --wait seconds); anything else (1 for a Python traceback, 2 for bad
arguments) means the check itself failed, which deploy/vm.sh reports as such instead of
"no leader". Used by deploy/vm.sh; needs kvstore importable.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from kvstore.client import Client

NO_LEADER = 3


def leaders(status: list[dict[str, Any]]) -> tuple[dict[int, int], set[int]]:
    """(group -> leader node id, groups seen) from the client's per-node status."""
    found: dict[int, int] = {}
    groups: set[int] = set()
    for node in status:
        for g in node.get("groups", []):
            groups.add(g["group"])
            if g["role"] == "leader":
                found[g["group"]] = node["id"]
    return found, groups


def describe(status: list[dict[str, Any]]) -> str:
    lines = []
    for node in status:
        if not node.get("reachable"):
            lines.append(f"  {node['endpoint']:<22} unreachable ({node.get('error', '?')})")
            continue
        roles = " ".join(
            f"g{g['group']}:{g['role']}@t{g['term']} applied={g['applied']}"
            for g in node.get("groups", [])
        )
        lines.append(f"  {node['endpoint']:<22} id={node['id']} {roles}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("endpoints", help="HOST:PORT,HOST:PORT,...")
    ap.add_argument("--wait", type=float, default=0.0, help="seconds to wait for leaders")
    ap.add_argument("--cacert", default=None, help="CA certificate (TLS clusters)")
    ap.add_argument("--cert", default=None, help="client certificate (mutual TLS)")
    ap.add_argument("--key", default=None, help="client key (mutual TLS)")
    args = ap.parse_args()
    endpoints = [e for e in args.endpoints.split(",") if e]
    deadline = time.monotonic() + args.wait
    last = ""
    with Client(endpoints, timeout=5.0, cacert=args.cacert, cert=args.cert, key=args.key) as c:
        while True:
            status = c.status()
            found, groups = leaders(status)
            text = describe(status)
            ok = bool(groups) and groups <= found.keys()
            if ok or time.monotonic() >= deadline:
                print(text)
                if ok:
                    print(
                        "leaders: " + ", ".join(f"g{g}=node{n}" for g, n in sorted(found.items()))
                    )
                else:
                    print("no leader yet" if not found else f"leaders only for {sorted(found)}")
                return 0 if ok else NO_LEADER
            if text != last and args.wait:
                print(
                    f"waiting for a leader ({deadline - time.monotonic():.0f} s left):\n{text}",
                    file=sys.stderr,
                )
                last = text
            time.sleep(2.0)


if __name__ == "__main__":
    sys.exit(main())
