"""Shared pytest options. Suites read them with request.config.getoption(...)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("kvstore")
    g.addoption("--rewrite", action="store_true", help="regenerate transcript expectations")
    g.addoption("--sim-seed", type=int, default=None, help="replay one simulation seed")
    g.addoption("--sim-schedules", type=int, default=None, help="simulated schedules per test")
    g.addoption("--soak", action="store_true", help="run long soak tests (simulation, jepsen)")
    g.addoption("--jepsen", action="store_true", help="run the short Jepsen fault runs")
    g.addoption("--e2e", action="store_true", help="run container and VM end-to-end tests")
    g.addoption("--vm-full", action="store_true", help="run the full 3-VM end-to-end test")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gates = {"soak": "--soak", "jepsen": "--jepsen", "e2e": "--e2e"}
    for item in items:
        for marker, opt in gates.items():
            # a marker, not a keyword: keywords also hold folder names (tests/jepsen/...)
            marked = item.get_closest_marker(marker) is not None
            if marked and not config.getoption(opt.lstrip("-").replace("-", "_")):
                item.add_marker(pytest.mark.skip(reason=f"needs {opt}"))
