"""The Raft core (etcd-io/raft's design in small modules); performs no I/O.

    RawNode(config, storage)   the Core contract; Ready handling is documented there
    Raft                       roles, terms, elections, message handling (raft.py)
    leader                     what a leader sends and how it reads the answers
    quorum / progress / tracker / log / read_only / confchange: one concept each

Choices worth knowing when driving it:
- ``Ready.committed`` holds only entries durable locally or in the same
  ``Ready.entries`` (persist those in the same transaction before applying).
- Membership changes one server at a time, or several at once through a joint
  configuration (a JOINT change; the leader proposes LEAVE_JOINT itself once it is
  applied); a voter may be demoted to a learner. A change takes effect on a node when
  the driver applies its CONF_CHANGE entry and calls ``apply_conf_change``. A leader
  proposes one only after its own term's no-op is applied, and one at a time.
- ``storage.initial_state()`` must return the ConfState in effect at
  ``config.applied`` (entries up to it are not handed out again).
- A node that starts with no membership at all (empty ConfState) accepts no entries
  until the leader sends it a snapshot, which carries the membership.
- Remote junk is dropped and counted in ``dropped`` by reason, never raised.
"""

from __future__ import annotations

from kvstore.consensus.raft.raft import Raft
from kvstore.consensus.raft.rawnode import RawNode

__all__ = ["Raft", "RawNode"]
