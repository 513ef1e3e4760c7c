"""The Raft core (etcd-io/raft's design in small modules); performs no I/O.

RawNode(config, storage)   the Core contract (rawnode.py)
Raft                       the state machine behind it (raft.py)
quorum / progress / tracker / log / read_only / confchange: one concept each.
"""

from __future__ import annotations

from kvstore.consensus.raft.raft import Raft
from kvstore.consensus.raft.rawnode import RawNode

__all__ = ["Raft", "RawNode"]
