"""The consensus cores stay pure: no I/O, clocks or global randomness under kvstore/consensus."""

from __future__ import annotations

import ast
import pathlib

FORBIDDEN = {"asyncio", "grpc", "lmdb", "time", "socket", "threading", "uvloop", "os", "subprocess"}
ROOT = pathlib.Path(__file__).resolve().parent.parent / "kvstore" / "consensus"


def _imports(path: pathlib.Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
    return out


def test_consensus_imports_no_io() -> None:
    files = sorted(ROOT.rglob("*.py"))
    assert files, "no consensus modules found"
    bad = []
    for f in files:
        for module, names in _imports(f):
            top = module.split(".")[0]
            if top in FORBIDDEN:
                bad.append(f"{f.relative_to(ROOT)}: import {module}")
            # The random module is allowed only for the random.Random type; module-level
            # functions (random.random(), from random import randint ...) are global state.
            if top == "random" and any(n != "Random" for n in names):
                bad.append(f"{f.relative_to(ROOT)}: from random import {names}")
    assert not bad, "I/O or global randomness in the pure core:\n" + "\n".join(bad)


def test_no_global_random_calls() -> None:
    bad = []
    for f in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "random"
                and node.attr != "Random"
            ):
                bad.append(f"{f.relative_to(ROOT)}:{node.lineno}: random.{node.attr}")
    assert not bad, "global random used in the pure core:\n" + "\n".join(bad)
