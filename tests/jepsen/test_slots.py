"""Jepsen slots: a run in slot S uses names, addresses and a lock no other slot uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_PROBE = (
    "import json; from kvstore.jepsen import hosts as h; "
    "print(json.dumps([h.BRIDGE, h.Host(index=3).ns, h.Host(index=3).veth, "
    "h.Host(index=3).ip, str(h.LOCK_PATH), h.DISK_SOURCE]))"
)


def _layout(slot: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "KVSTORE_JEPSEN_SLOT"}
    if slot is not None:
        env["KVSTORE_JEPSEN_SLOT"] = slot
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    return list(json.loads(out.stdout))


def test_slot_zero_keeps_the_documented_layout() -> None:
    assert _layout(None)[:5] == [
        "kvjbr0",
        "kvj3",
        "kvjv3",
        "10.77.0.13",
        "/run/lock/kvstore-jepsen.lock",
    ]


def test_other_slots_share_nothing_with_slot_zero() -> None:
    zero, two = _layout("0"), _layout("2")
    assert two[:5] == [
        "kvjbr2",
        "kvjs2-3",
        "kvjs2v3",
        "10.77.2.13",
        "/run/lock/kvstore-jepsen-2.lock",
    ]
    assert not set(zero) & set(two)


def test_a_bad_slot_is_refused() -> None:
    env = dict(os.environ, KVSTORE_JEPSEN_SLOT="x")
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "KVSTORE_JEPSEN_SLOT" in done.stderr
