"""Pure consensus cores behind one contract (see types.py). Performs no I/O."""

from __future__ import annotations

from kvstore.consensus.types import Config, Core, LogStorage

KINDS = ("raft", "paxos")


def new_core(kind: str, config: Config, storage: LogStorage) -> Core:
    """Build a core by name. Bootstrap membership comes from ``storage.initial_state()``
    (the ConfState of its snapshot, index 0 on a new cluster)."""
    if kind == "raft":
        from kvstore.consensus.raft import RawNode

        return RawNode(config, storage)
    if kind == "paxos":
        from kvstore.consensus.paxos import PaxosNode

        return PaxosNode(config, storage)
    raise ValueError(f"unknown consensus {kind!r}; choose one of {', '.join(KINDS)}")
