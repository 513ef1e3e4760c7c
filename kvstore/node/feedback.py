"""Transport feedback for the cores: what could not be sent, and how snapshots went.

Rule: the transport and the snapshot sender never touch a core; they record here what
happened, and the driver task reports it to the cores before its next ``ready()``
(etcd's ReportUnreachable and ReportSnapshot). So a leader stops streaming to a peer
that is down, and learns at once that a snapshot transfer finished or failed instead
of waiting out its retry timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from kvstore.consensus.types import Core, Message


class TransportFeedback:
    def __init__(self, poke: Callable[[], None]) -> None:
        self._poke = poke
        self._unreachable: set[tuple[int, int]] = set()
        """(group, peer) pairs with messages the transport dropped unsent."""
        self._snapshots: dict[tuple[int, int], bool] = {}
        """(group, peer) -> the last snapshot transfer's outcome."""

    def lost(self, msgs: list[Message]) -> None:
        """Transport side: these messages were dropped unsent (peer down, queue full)."""
        for m in msgs:
            self._unreachable.add((m.group, m.to))
        if msgs:
            self._poke()

    def snapshot(self, group: int, peer: int, ok: bool) -> None:
        """Snapshot sender side: the transfer to ``peer`` ended (``ok``: fully received)."""
        self._snapshots[(group, peer)] = ok
        self._poke()

    def report(self, cores: Mapping[int, Core]) -> None:
        """Driver side, outside ready()/advance(): tell each group's core."""
        snapshots, self._snapshots = self._snapshots, {}
        unreachable, self._unreachable = self._unreachable, set()
        for (group, peer), ok in snapshots.items():
            core = cores.get(group)
            if core is not None:
                core.report_snapshot(peer, ok)
        for group, peer in unreachable:
            core = cores.get(group)
            if core is not None:
                core.report_unreachable(peer)
