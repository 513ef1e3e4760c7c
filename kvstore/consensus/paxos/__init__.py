"""Multi-Paxos: the alternative consensus core behind the shared contract.

Performs no I/O (the rule of ``kvstore.consensus``). ``PaxosNode(config, storage)``
implements ``kvstore.consensus.types.Core``, so the node driver, storage,
transport, simulator and tests are shared with the Raft core.

Protocol ("Paxos Made Simple"; "Paxos Made Moderately Complex"):
- Ballots are (round, node id) packed as ``round << 16 | node_id`` (``ballot.py``),
  carried in ``Message.term``; ``HardState.term`` is the acceptor's promise and
  ``HardState.commit`` its chosen prefix. A slot's accepted value is
  ``Entry(index=slot, term=ballot it was accepted in)``; a higher ballot may
  overwrite it, a chosen one never changes. Stored data carries the value's
  origin ballot so committed entries keep the proposer's ``ProposalId.term``
  (``value.py``).
- Phase 1, once for all open slots: a node whose randomized takeover timeout
  expires picks a higher ballot and sends PREPARE(ballot, first unchosen slot).
  PROMISE carries the acceptor's accepted values from that slot and its commit.
  With a quorum of promises the new leader adopts, per slot, a value known
  chosen, else the highest-ballot value, else a NOOP (``recovery.py``).
- Phase 2, per slot, pipelined: ACCEPT(ballot, prev slot, entries, commit) under
  per-acceptor flow control (``progress.py``: probe / replicate / snapshot,
  ``max_inflight_msgs`` and ``max_inflight_bytes``, ``max_size_per_msg``);
  ACCEPTED(index) acknowledges the acceptor's prefix of the leader's values.
  Acceptor logs stay contiguous (the shared LogStorage needs it): an ACCEPT past
  an acceptor's prefix is refused with a hint and the leader probes back. A slot
  is chosen when a quorum holds it; learners hear the commit index in ACCEPT and
  PAXOS_HEARTBEAT.
- Liveness: the leader heartbeats every ``heartbeat_tick``; with
  ``check_quorum`` it steps down without a live quorum each ``election_tick``,
  and acceptors that heard from a leader within ``election_tick`` ignore other
  proposers' PREPAREs (a leader lease, so a rejoining node cannot depose a
  healthy leader); duelling proposers back off on a higher ballot and retry after
  a random timeout from ``config.rng``. A leader refused by one acceptor that
  holds a higher promise runs phase 1 again above it (under leases), so a node
  that campaigned alone behind a partition rejoins without an election timeout;
  this takes the place of Raft's PreVote (``Config.pre_vote`` is not used).
- Snapshots: an acceptor behind the leader's compacted log gets PAXOS_SNAPSHOT
  (a chosen prefix); it keeps its accepted slots after the snapshot index. A
  driver must install ``Ready.snapshot`` before appending ``Ready.entries``.
- Reads: ``read_index`` on the leader (or forwarded by READ_INDEX) is confirmed
  by a heartbeat round answered by a quorum still holding the ballot, and only
  once every slot the leader recovered in phase 1 is chosen.
- Leadership transfer: the leader stops proposing, catches the target up and
  sends PAXOS_TIMEOUT_NOW; the target runs phase 1 at once, past leases.
- Membership: a conf change is a value chosen like any other and takes effect
  on each node when applied; at most one is pending at a time; quorums need a
  majority of the applied config and of each pending one (``membership.py``).
  Only a voter of the applied config campaigns. A node that joined with no
  membership accepts no values until a snapshot brings one (the join contract
  in ``kvstore.consensus.types``).
"""

from __future__ import annotations

from kvstore.consensus.paxos.node import PaxosNode

__all__ = ["PaxosNode"]
