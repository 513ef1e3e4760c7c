"""A node's DriverReplicas over a stand-in driver (node 2): what the tombstone tests need
of a driver is its config, its groups, its storage and how it makes a group's core."""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

from kvstore.node.driver import NodeDriver
from kvstore.node.shards import DriverReplicas
from kvstore.storage import NodeStorage


def replicas(
    st: NodeStorage, kind: str, make_core: Callable[[int], Any], **extra: Any
) -> tuple[Any, DriverReplicas]:
    driver = SimpleNamespace(
        config=SimpleNamespace(node_id=2, consensus=kind), groups={}, storage=st, **extra
    )
    driver._make_group = make_core
    driver.log_covers = functools.partial(NodeDriver.log_covers, driver)
    return driver, DriverReplicas(cast(Any, driver))
