"""The fast search agrees with brute force, and decides large many-client histories quickly.

Brute force: every order of the operations that respects real time (an operation of unknown
outcome may also be left out) is replayed on the model. The search's shortcuts (reads
first, appends pruned by pending reads, memo, slices, parallel keys) must never change a
verdict, only the time it takes.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.jepsen.checker import parallel
from kvstore.jepsen.checker.linearizable import check
from kvstore.jepsen.checker.models import ListAppendModel, Model, RegisterModel, StringKVModel
from kvstore.jepsen.checker.search import KeySearch
from kvstore.jepsen.cli import main
from kvstore.jepsen.formats import load
from kvstore.jepsen.history import Operation, pair

from .hardgen import kv_lines


def _brute(ops: Sequence[Operation], model: Model) -> bool:
    ops = model.prune(ops)
    known = [o for o in ops if not o.unknown]
    maybe = [o for o in ops if o.unknown]
    for k in range(len(maybe) + 1):
        for extra in itertools.combinations(maybe, k):
            chosen = known + list(extra)
            for order in itertools.permutations(chosen):
                if not all(
                    not (b.ret < a.call) for i, a in enumerate(order) for b in order[i + 1 :]
                ):
                    continue
                state = model.init()
                for o in order:
                    ok, state = model.step(state, o)
                    if not ok:
                        break
                else:
                    return True
    return False


def _random_ops(rng: random.Random, kind: str, n: int) -> list[Operation]:
    """Small histories with arbitrary results: about half of them are not linearizable."""
    ops = []
    for i in range(n):
        call = rng.uniform(0, 10)
        ret = call + rng.uniform(0, 4)
        unknown = rng.random() < 0.15
        if kind == "kv":
            f = rng.choice(("get", "get", "put", "append", "append"))
            inp = None if f == "get" else rng.choice("ab")
            out = rng.choice(("", "a", "b", "ab", "ba", "aa")) if f == "get" else inp
        elif kind == "list":
            f = rng.choice(("read", "append", "append"))
            inp = None if f == "read" else i
            out = tuple(rng.sample(range(n), rng.randrange(min(3, n + 1)))) if f == "read" else None
        else:
            f = rng.choice(("read", "write", "cas"))
            inp = rng.randrange(3) if f == "write" else None
            if f == "cas":
                inp = (rng.randrange(3), rng.randrange(3))
            out = rng.choice((None, 0, 1, 2)) if f == "read" else inp
            if f == "cas":
                out = rng.random() < 0.5
        if unknown:
            out, ret = None, math.inf
        ops.append(
            Operation(
                id=i,
                process=i,
                f=f,
                key="k",
                input=inp,
                output=out,
                call=call,
                ret=ret,
                unknown=unknown,
            )
        )
    return ops


MODELS = {"kv": StringKVModel, "list": ListAppendModel, "register": RegisterModel}


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), kind=st.sampled_from(sorted(MODELS)), n=st.integers(1, 6))
def test_search_agrees_with_brute_force(seed: int, kind: str, n: int) -> None:
    ops = _random_ops(random.Random(seed), kind, n)
    model = MODELS[kind]()
    s = KeySearch(model.prune(ops) if seed % 2 else ops, model)  # pruning is only a cut
    assert s.run(math.inf)
    assert s.linearizable == _brute(ops, model)


def test_search_resumes_across_slices() -> None:
    """A search cut into many tiny slices reaches the same verdict as one run."""
    lines = kv_lines(5, clients=8, ops=400, keys=1, anomaly="stale")
    loaded = _load(lines)
    ops = loaded.model.prune(pair(loaded.events))
    s = KeySearch(ops, loaded.model)
    slices = 0
    while not s.run(time.monotonic() + 0.0005):
        slices += 1
    assert not s.linearizable and slices > 1


def _load(lines: list[str], tmp: Path | None = None) -> object:
    import tempfile

    d = Path(tempfile.mkdtemp()) if tmp is None else tmp
    p = d / "h.txt"
    p.write_text("\n".join(lines) + "\n")
    return load(p)


@pytest.mark.parametrize("workers", [1, 2])
def test_generated_50_client_histories_decide_in_seconds(
    workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallel, "FORK_MIN_OPS", 0)
    for seed in (1, 2):
        good = _load(kv_lines(seed, clients=50, ops=3000))
        bad = _load(kv_lines(seed, clients=50, ops=3000, anomaly="stale"))
        t0 = time.monotonic()
        r_good = check(pair(good.events), good.model, workers=workers)  # type: ignore[attr-defined]
        r_bad = check(pair(bad.events), bad.model, workers=workers, shrink_budget=1.0)  # type: ignore[attr-defined]
        assert time.monotonic() - t0 < 30.0  # about 1 s on an idle core
        assert r_good.verdict == "linearizable", seed
        assert r_bad.verdict == "not-linearizable", seed
        (failure,) = r_bad.failures
        assert any(op.f == "get" for op in failure.window)
        assert r_bad.stopped_keys or r_bad.checked_keys


@pytest.mark.parametrize("anomaly", [None, "stale"])
def test_one_key_with_20_concurrent_clients(anomaly: str | None) -> None:
    """Appends overwritten by a put before anyone read them: their orders must not multiply."""
    loaded = _load(kv_lines(5, clients=20, ops=600, keys=1, anomaly=anomaly))
    t0 = time.monotonic()
    result = check(pair(loaded.events), loaded.model, timeout=60.0, shrink_budget=0.5)  # type: ignore[attr-defined]
    assert result.verdict == ("linearizable" if anomaly is None else "not-linearizable")
    assert time.monotonic() - t0 < 30.0  # under 1 s on an idle core; no verdict in 60 s before


def test_timeout_gives_unknown_not_a_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "big.txt"
    p.write_text("\n".join(kv_lines(3, clients=50, ops=4000)) + "\n")
    assert main(["check", str(p), "--timeout", "0.01", "--workers", "1"]) == 3
    out = capsys.readouterr().out
    assert ": unknown (" in out and "undecided:" in out
    assert main(["check", str(p)]) == 0
