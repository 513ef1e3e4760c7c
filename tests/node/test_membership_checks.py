"""Membership requests that would silently weaken the cluster are refused up front."""

from __future__ import annotations

import pytest

from kvstore.consensus.types import ConfChangeType, ConfState
from kvstore.node.errors import InvalidOp
from kvstore.server.admin import check_change

CS = ConfState(voters=frozenset({1, 2, 3}), learners=frozenset({4}))


@pytest.mark.parametrize(
    ("kind", "node", "endpoint", "known", "why"),
    [
        (ConfChangeType.ADD_NODE, 9, "", False, "not a learner"),
        (ConfChangeType.ADD_LEARNER, 5, "nohostport", False, "HOST:PORT"),
        (ConfChangeType.ADD_LEARNER, 5, "h:99999", False, "HOST:PORT"),
        (ConfChangeType.ADD_LEARNER, 5, "", False, "give its HOST:PORT"),
        (ConfChangeType.ADD_LEARNER, 2, "h:1", True, "already a voter"),
        (ConfChangeType.REMOVE_NODE, 7, "", True, "not a member"),
        (ConfChangeType.ADD_LEARNER, 0, "h:1", False, ">= 1"),
    ],
)
def test_refused(kind: ConfChangeType, node: int, endpoint: str, known: bool, why: str) -> None:
    with pytest.raises(InvalidOp, match=why):
        check_change(kind, node, endpoint, CS, known=known)


@pytest.mark.parametrize(
    ("kind", "node", "endpoint", "known"),
    [
        (ConfChangeType.ADD_NODE, 4, "", True),
        (ConfChangeType.ADD_LEARNER, 5, "10.0.0.5:7001", False),
        (ConfChangeType.ADD_LEARNER, 4, "", True),
        (ConfChangeType.REMOVE_NODE, 4, "", True),
        (ConfChangeType.REMOVE_NODE, 3, "", True),
    ],
)
def test_allowed(kind: ConfChangeType, node: int, endpoint: str, known: bool) -> None:
    check_change(kind, node, endpoint, CS, known=known)
