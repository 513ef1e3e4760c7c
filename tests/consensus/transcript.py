"""Transcript runner for consensus cores (the etcd-io/raft datadriven idea).

A transcript is a text file of blocks separated by blank lines:

    # comments start with '#'
    campaign 1
    ----
    ok

The line(s) before ``----`` are one command; the lines after it are its expected
output (never blank: an empty output prints ``ok``). ``pytest --rewrite`` rewrites
the outputs. The runner is generic over a core factory (``Cls(config, storage)``),
so Raft and Multi-Paxos share ``COMMANDS``; core-specific commands live in a table
the caller passes (``RAFT_COMMANDS`` in test_raft_transcripts.py, ``PAXOS_COMMANDS``
in test_paxos_transcripts.py).

Network model: ``process-ready`` persists a node's Ready to its MemoryStorage, applies
committed entries (CONF_CHANGE ones via ``apply_conf_change``) and queues the messages;
``deliver-msgs`` steps queued messages into their recipients, dropping those that
cross a partition or reach a crashed node. ``crash`` discards a core with everything it
did not hand out in a Ready; ``restart`` builds a new one on the same storage.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kvstore.consensus.memory import MemoryStorage
from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    ConsensusError,
    Core,
    EntryType,
    HardState,
    LogStorage,
    Message,
    MessageType,
    Ready,
)

from .transcript_fmt import (
    fmt_conf,
    fmt_entries,
    fmt_entry,
    fmt_ids,
    fmt_msg,
    fmt_snapshot,
    fmt_status,
)

CoreFactory = Callable[[Config, LogStorage], Core]


class HarnessStorage(MemoryStorage):
    """MemoryStorage that also remembers the applied membership, as the LMDB store
    does, so a restarted core learns the ConfState in effect at ``applied``."""

    def __init__(self, voters: Iterable[int], learners: Iterable[int] = ()) -> None:
        super().__init__(voters=frozenset(voters))
        self.conf_state = ConfState(voters=frozenset(voters), learners=frozenset(learners))
        self._snapshot = dataclasses.replace(
            self._snapshot,
            metadata=dataclasses.replace(self._snapshot.metadata, conf_state=self.conf_state),
        )
        self.applied = 0

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self.conf_state


@dataclass(slots=True)
class NodeState:
    id: int
    config: Config
    storage: HarnessStorage
    core: Core | None
    applied: list[str] = field(default_factory=list)
    """What the state machine applied: formatted entries and restored snapshots."""


# -- argument parsing --------------------------------------------------------------------
def parse_ids(v: str) -> list[int]:
    v = v.strip("()")
    return [int(x) for x in v.split(",") if x]


def kwargs(args: list[str]) -> tuple[list[str], dict[str, str]]:
    pos, kw = [], {}
    for a in args:
        if "=" in a:
            k, v = a.split("=", 1)
            kw[k] = v
        else:
            pos.append(a)
    return pos, kw


def filters(args: list[str]) -> tuple[list[int] | None, list[int] | None, dict[str, str]]:
    _, kw = kwargs(args)
    to = parse_ids(kw["to"]) if "to" in kw else None
    return to, parse_ids(kw["from"]) if "from" in kw else None, kw


class Harness:
    def __init__(self, factory: CoreFactory, group: int = 1) -> None:
        self.factory = factory
        self.group = group
        self.nodes: dict[int, NodeState] = {}
        self.queue: list[Message] = []
        self.partition: list[set[int]] = []

    # -- helpers used by commands --------------------------------------------------------
    def core(self, node: int) -> Core:
        c = self.nodes[node].core
        if c is None:
            raise ConsensusError(f"node {node} is crashed")
        return c

    def live(self) -> list[int]:
        return [i for i, n in sorted(self.nodes.items()) if n.core is not None]

    def connected(self, a: int, b: int) -> bool:
        if not self.partition:
            return True
        return any(a in side and b in side for side in self.partition)

    def ids_or_all(self, args: list[str]) -> list[int]:
        return [int(a) for a in args] if args else self.live()

    def process_ready(self, node: int, out: list[str]) -> bool:
        core = self.core(node)
        if not core.has_ready():
            return False
        st = self.nodes[node]
        rd = core.ready()
        out.append(f"> {node} ready")
        self.persist(st, rd, out)
        core.advance(rd)
        return True

    def persist(self, st: NodeState, rd: Ready, out: list[str]) -> None:
        core = self.core(st.id)
        if rd.soft_state is not None:
            out.append(f"  soft: leader={rd.soft_state.leader} {rd.soft_state.role.name}")
        if rd.hard_state is not None:
            hs = rd.hard_state
            out.append(f"  hard: term={hs.term} vote={hs.vote} commit={hs.commit}")
            st.storage.set_hard_state(hs)
        if rd.snapshot is not None:
            out.append(f"  snapshot: {fmt_snapshot(rd.snapshot)}")
            st.storage.apply_snapshot(rd.snapshot)
            st.storage.conf_state = rd.snapshot.metadata.conf_state
            st.storage.applied = rd.snapshot.metadata.index
            st.applied.append(f"snapshot {rd.snapshot.metadata.term}/{rd.snapshot.metadata.index}")
        if rd.entries:
            out.append(f"  entries: {fmt_entries(rd.entries)}")
            st.storage.append(rd.entries)
        for m in rd.messages:
            out.append(f"  msg: {fmt_msg(m)}")
            self.queue.append(m)
        if rd.committed:
            out.append(f"  committed: {fmt_entries(rd.committed)}")
            for e in rd.committed:
                st.applied.append(fmt_entry(e))
                st.storage.applied = e.index
                if e.type is EntryType.CONF_CHANGE:
                    cs = core.apply_conf_change(ConfChange.decode(e.data))
                    st.storage.conf_state = cs
                    out.append(f"  conf-state: {fmt_conf(cs)}")
        for r in rd.read_states:
            ctx = r.request_ctx.decode("utf-8", "backslashreplace")
            out.append(f"  read-state: index={r.index} ctx={ctx}")

    def deliver(
        self, to: list[int] | None, frm: list[int] | None, out: list[str], echo: bool
    ) -> int:
        keep, n = [], 0
        for m in self.queue:
            if (to is not None and m.to not in to) or (frm is not None and m.from_ not in frm):
                keep.append(m)
                continue
            target = self.nodes.get(m.to)
            if target is None or target.core is None:
                out.append(f"  dropped (down): {fmt_msg(m)}")
            elif not self.connected(m.from_, m.to):
                out.append(f"  dropped (partition): {fmt_msg(m)}")
            else:
                if echo:
                    out.append(fmt_msg(m))
                target.core.step(m)
                n += 1
        self.queue = keep
        return n

    # -- running a transcript ------------------------------------------------------------
    def run(self, command: str, table: dict[str, Command]) -> str:
        words = command.split()
        name, args = words[0], words[1:]
        fn = table.get(name)
        if fn is None:
            return f"unknown command {name!r}"
        out: list[str] = []
        try:
            fn(self, args, out)
        except (ConsensusError, ValueError, KeyError) as e:
            out.append(f"error: {type(e).__name__}: {e}")
        return "\n".join(out) if out else "ok"


Command = Callable[[Harness, list[str], list[str]], None]


# -- generic commands --------------------------------------------------------------------
def cmd_add_nodes(h: Harness, args: list[str], out: list[str]) -> None:
    """add-nodes N [voters=(1,2,3)] [learners=(4)] [election=10] [heartbeat=1]
    [prevote=true] [checkquorum=true] [inflight=256] [inflight-bytes=N] [max-msg=N]"""
    pos, kw = kwargs(args)
    count = int(pos[0])
    start = max(h.nodes, default=0) + 1
    voters = parse_ids(kw.get("voters", "()"))
    learners = parse_ids(kw.get("learners", "()"))
    for node in range(start, start + count):
        cfg = Config(
            id=node,
            group=h.group,
            election_tick=int(kw.get("election", "10")),
            heartbeat_tick=int(kw.get("heartbeat", "1")),
            pre_vote=kw.get("prevote", "true") == "true",
            check_quorum=kw.get("checkquorum", "true") == "true",
            max_inflight_msgs=int(kw.get("inflight", "256")),
            max_inflight_bytes=int(kw.get("inflight-bytes", str(16 << 20))),
            max_size_per_msg=int(kw.get("max-msg", str(1 << 20))),
            rng=random.Random(node),
        )
        st = NodeState(id=node, config=cfg, storage=HarnessStorage(voters, learners), core=None)
        st.core = h.factory(st.config, st.storage)
        h.nodes[node] = st
    out.append(f"added {fmt_ids(range(start, start + count))}")


def cmd_campaign(h: Harness, args: list[str], out: list[str]) -> None:
    h.core(int(args[0])).campaign()


def cmd_tick(h: Harness, args: list[str], out: list[str]) -> None:
    """tick ID|all [N]"""
    ids = h.live() if args[0] == "all" else [int(args[0])]
    n = int(args[1]) if len(args) > 1 else 1
    for _ in range(n):
        for node in ids:
            h.core(node).tick()


def cmd_propose(h: Harness, args: list[str], out: list[str]) -> None:
    pid = h.core(int(args[0])).propose(" ".join(args[1:]).encode())
    out.append(f"proposed {pid.term}/{pid.index}")


def cmd_process_ready(h: Harness, args: list[str], out: list[str]) -> None:
    for node in h.ids_or_all(args):
        h.process_ready(node, out)


def cmd_deliver_msgs(h: Harness, args: list[str], out: list[str]) -> None:
    """deliver-msgs [to=(2,3)] [from=(1)]"""
    to, frm, _ = filters(args)
    h.deliver(to, frm, out, echo=True)


def cmd_drop_msgs(h: Harness, args: list[str], out: list[str]) -> None:
    """drop-msgs [to=(2,3)] [from=(1)] [type=APPEND] [context=ctx]"""
    to, frm, kw = filters(args)
    typ = kw.get("type")
    ctx = kw["context"].encode() if "context" in kw else None
    keep = []
    for m in h.queue:
        if (
            (to is None or m.to in to)
            and (frm is None or m.from_ in frm)
            and (typ is None or m.type.name == typ)
            and (ctx is None or m.context == ctx)
        ):
            out.append(f"dropped: {fmt_msg(m)}")
        else:
            keep.append(m)
    h.queue = keep


def cmd_stabilize(h: Harness, args: list[str], out: list[str]) -> None:
    """Process Readies and deliver messages until nothing moves (the given nodes only)."""
    ids = h.ids_or_all(args)
    for _ in range(1000):
        moved = False
        for node in ids:
            if h.nodes[node].core is not None:
                moved |= h.process_ready(node, out)
        moved |= h.deliver(ids, None, out, echo=False) > 0
        if not moved:
            return
    out.append("error: did not stabilize in 1000 rounds")


def cmd_tick_stabilize(h: Harness, args: list[str], out: list[str]) -> None:
    """tick-stabilize N: N times, tick every live node once and stabilize; prints only
    role/leader changes, commits and read states, prefixed with the tick number
    (messages lost to partitions are not shown)."""
    for t in range(1, int(args[0]) + 1):
        for node in h.live():
            h.core(node).tick()
        trace: list[str] = []
        cmd_stabilize(h, [], trace)
        node = 0
        for line in trace:
            if line.startswith("> "):
                node = int(line.split()[1])
            elif line.startswith(
                ("  soft:", "  snapshot:", "  committed:", "  conf-state:", "  read-state:")
            ):
                out.append(f"tick {t}: {node}{line[1:]}")
            elif line.startswith("error"):
                out.append(f"tick {t}: {line}")


def cmd_partition(h: Harness, args: list[str], out: list[str]) -> None:
    """partition 1 2 | 3: nodes talk only within their side."""
    sides: list[set[int]] = [set()]
    for a in args:
        if a == "|":
            sides.append(set())
        else:
            sides[-1].add(int(a))
    rest = set(h.nodes) - set().union(*sides)
    if rest:
        sides.append(rest)
    h.partition = sides
    out.append("partition " + " | ".join(fmt_ids(s) for s in sides))


def cmd_heal(h: Harness, args: list[str], out: list[str]) -> None:
    h.partition = []


def cmd_crash(h: Harness, args: list[str], out: list[str]) -> None:
    h.nodes[int(args[0])].core = None


def cmd_restart(h: Harness, args: list[str], out: list[str]) -> None:
    st = h.nodes[int(args[0])]
    st.config.applied = st.storage.applied
    st.config.rng = random.Random(st.id * 1000 + len(st.applied))
    st.core = h.factory(st.config, st.storage)
    out.append(f"restarted {st.id}: {fmt_status(st.core)}")


def cmd_wipe(h: Harness, args: list[str], out: list[str]) -> None:
    """wipe ID voters=(1,2,3): the node lost its disk and restarts as on its first start
    (bootstrapped from the same peer list: empty log, term 0, no vote)."""
    pos, kw = kwargs(args)
    st = h.nodes[int(pos[0])]
    st.storage = HarnessStorage(parse_ids(kw["voters"]), parse_ids(kw.get("learners", "()")))
    st.applied = []
    st.config.applied = 0
    st.config.rng = random.Random(st.id * 7919)
    st.core = h.factory(st.config, st.storage)
    out.append(f"wiped {st.id}: {fmt_status(st.core)}")


def cmd_status(h: Harness, args: list[str], out: list[str]) -> None:
    for node in h.ids_or_all(args):
        out.append(f"{node}: {fmt_status(h.core(node))}")


def cmd_raft_state(h: Harness, args: list[str], out: list[str]) -> None:
    for node, st in sorted(h.nodes.items()):
        if st.core is None:
            out.append(f"{node}: DOWN")
        else:
            s = st.core.status()
            out.append(f"{node}: {s.role.name} term={s.term} leader={s.leader}")


def cmd_log(h: Harness, args: list[str], out: list[str]) -> None:
    """The durable log of a node (what is in its storage)."""
    st = h.nodes[int(args[0])].storage
    snap = st.snapshot()
    out.append(f"snapshot: {fmt_snapshot(snap)}")
    lo, hi = st.first_index(), st.last_index()
    out.append(f"entries: {fmt_entries(st.entries(lo, hi + 1)) if hi >= lo else '[]'}")
    hs = st.hard_state
    out.append(f"hard: term={hs.term} vote={hs.vote} commit={hs.commit}")


def cmd_applied(h: Harness, args: list[str], out: list[str]) -> None:
    for node in h.ids_or_all(args):
        out.append(f"{node}: [{', '.join(h.nodes[node].applied)}]")


def cmd_read_index(h: Harness, args: list[str], out: list[str]) -> None:
    h.core(int(args[0])).read_index(args[1].encode())


def cmd_transfer_leader(h: Harness, args: list[str], out: list[str]) -> None:
    h.core(int(args[0])).transfer_leadership(int(args[1]))


CONF_TYPES = {
    "add-node": ConfChangeType.ADD_NODE,
    "remove-node": ConfChangeType.REMOVE_NODE,
    "add-learner": ConfChangeType.ADD_LEARNER,
}


def cmd_propose_conf_change(h: Harness, args: list[str], out: list[str]) -> None:
    """propose-conf-change ID add-node|remove-node|add-learner N [TYPE N ...]: several
    changes make one JOINT change; propose-conf-change ID leave-joint."""
    if args[1:] == ["leave-joint"]:
        cc = ConfChange(type=ConfChangeType.LEAVE_JOINT)
    else:
        pairs = list(zip(args[1::2], args[2::2], strict=True))
        parts = [ConfChange(type=CONF_TYPES[t], node_id=int(n)) for t, n in pairs]
        cc = (
            parts[0]
            if len(parts) == 1
            else ConfChange(type=ConfChangeType.JOINT, changes=tuple(parts))
        )
    pid = h.core(int(args[0])).propose_conf_change(cc)
    out.append(f"proposed {pid.term}/{pid.index}")


def cmd_compact(h: Harness, args: list[str], out: list[str]) -> None:
    """compact ID INDEX: snapshot the applied state at INDEX, drop the log up to it."""
    st = h.nodes[int(args[0])]
    index = int(args[1])
    if index > st.storage.applied:
        raise ValueError(f"cannot compact to {index}: applied is {st.storage.applied}")
    data = f"snap@{index}".encode()
    st.storage.create_snapshot(index, st.storage.conf_state, data)
    st.storage.compact(index)
    out.append(f"compacted {st.id} to {index}")


def cmd_dropped(h: Harness, args: list[str], out: list[str]) -> None:
    for node in h.ids_or_all(args):
        counts = h.core(node).dropped
        shown = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        out.append(f"{node}: {shown or 'none'}")


def cmd_step(h: Harness, args: list[str], out: list[str]) -> None:
    """step TO TYPE from=F [term=T] [index=I] ...: inject a hand-made message."""
    pos, kw = kwargs(args)
    to = int(pos[0])
    fields: dict[str, object] = {}
    for k, v in kw.items():
        if k == "from":
            fields["from_"] = int(v)
        elif k == "group":
            fields["group"] = int(v)
        elif k == "context":
            fields["context"] = v.encode()
        elif k == "reject":
            fields["reject"] = v == "true"
        else:
            fields[k] = int(v)
    fields.setdefault("group", h.group)
    msg = Message(type=MessageType[pos[1]], to=to, **fields)  # type: ignore[arg-type]
    h.core(to).step(msg)


COMMANDS: dict[str, Command] = {
    "add-nodes": cmd_add_nodes,
    "campaign": cmd_campaign,
    "tick": cmd_tick,
    "propose": cmd_propose,
    "process-ready": cmd_process_ready,
    "deliver-msgs": cmd_deliver_msgs,
    "drop-msgs": cmd_drop_msgs,
    "stabilize": cmd_stabilize,
    "tick-stabilize": cmd_tick_stabilize,
    "partition": cmd_partition,
    "heal": cmd_heal,
    "crash": cmd_crash,
    "restart": cmd_restart,
    "wipe": cmd_wipe,
    "status": cmd_status,
    "raft-state": cmd_raft_state,
    "log": cmd_log,
    "applied": cmd_applied,
    "read-index": cmd_read_index,
    "transfer-leader": cmd_transfer_leader,
    "propose-conf-change": cmd_propose_conf_change,
    "compact": cmd_compact,
    "dropped": cmd_dropped,
    "step": cmd_step,
}


# -- file format -------------------------------------------------------------------------
@dataclass(slots=True)
class Block:
    comments: list[str]
    command: str
    expected: str


def parse(text: str) -> list[Block]:
    blocks: list[Block] = []
    comments: list[str] = []
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("#") or not line.strip():
            if line.strip() or (comments and comments[-1]):
                comments.append(line.rstrip())  # keeps one blank between comment paragraphs
            continue
        if next(lines, "").strip() != "----":
            raise ValueError(f"expected '----' after {line!r}")
        out = list(itertools.takewhile(str.strip, lines))  # also eats the blank separator
        blocks.append(Block(comments=comments, command=line.strip(), expected="\n".join(out)))
        comments = []
    return blocks


def render(blocks: list[Block], outputs: list[str]) -> str:
    parts = []
    for b, o in zip(blocks, outputs, strict=True):
        head = "\n".join(c for c in b.comments).rstrip("\n")
        text = (head + "\n" if head else "") + f"{b.command}\n----\n{o}\n"
        parts.append(text)
    return "\n".join(parts)


def run_file(
    path: pathlib.Path,
    factory: CoreFactory,
    extra: dict[str, Command] | None = None,
    rewrite: bool = False,
) -> list[tuple[str, str, str]]:
    """Run a transcript; returns (command, expected, actual) for every mismatch.
    With ``rewrite`` the file is rewritten with the actual outputs instead."""
    table = {**COMMANDS, **(extra or {})}
    blocks = parse(path.read_text())
    h = Harness(factory)
    outputs = [h.run(b.command, table) for b in blocks]
    if rewrite:
        path.write_text(render(blocks, outputs))
        return []
    return [
        (b.command, b.expected, o) for b, o in zip(blocks, outputs, strict=True) if o != b.expected
    ]


__all__ = ["COMMANDS", "Command", "Harness", "HarnessStorage", "run_file"]
