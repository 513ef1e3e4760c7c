"""Shard checkers for the sharded simulation; they raise ``SafetyViolation`` at the first breach.

Invariants checked (docs/sharding.md):
- ranges on a node: after every persist (so at every applied index a node reaches) the
  descriptors of the replicas a node holds never overlap;
- one descriptor per index: every replica of a group holds the same descriptor and the
  same membership at the same applied index (splits and conf changes are log entries),
  and the descriptor's voters and learners are the membership's;
- the map tiles: the newest descriptor of every live shard, merged by the shard map's
  own rule (``ShardMap.report``: newer replaces what it overlaps), covers the key space
  from b"" to the end with no gap and no overlap, after every persist anywhere;
- versions only rise: a group's descriptor never goes back to an older epoch on a node
  (a snapshot or a restart must not roll a range back);
- one outcome per merge attempt (``MergeChecker``): a prepared merge (the source's id
  and epoch, which a rollback raises) is committed (a CommitMerge applied in the target)
  or rolled back (a RollbackMerge applied in the source), never both: the source takes
  writes again after a rollback, so a CommitMerge applied after it absorbs a source whose
  replicas no longer agree (FINDINGS.md F11);
- the KV model (``KVModel``): a write (unique value) is applied fresh at most once, in
  one shard at one index, on every replica with the same outcome; per key, each fresh
  write's ``prev`` is the value of the last write applied to that key in ANY shard, so a
  write the split, merge or move lost, or a key two shards both accepted writes for,
  shows at the next write of that key; at the end every replica of the shard that owns
  a key holds the key's last written value (``check_final``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kvstore.consensus.types import ConfState, Entry
from kvstore.shard import commands as shard_cmds
from kvstore.shard.descriptor import Descriptor, Epoch
from kvstore.shard.shardmap import ShardMap
from kvstore.statemachine.commands import Command, Put, decode_entry
from kvstore.statemachine.types import ApplyResult, KeyValue

from .checkers import SafetyViolation


def _epoch(d: Descriptor) -> tuple[int, int]:
    return (d.epoch.version, d.epoch.conf_ver)


@dataclass(slots=True)
class RangeChecker:
    map: ShardMap = field(default_factory=ShardMap)
    """The newest descriptors as applied anywhere (what the meta group would learn)."""
    desc_at: dict[tuple[int, int], Descriptor] = field(default_factory=dict)
    """(group, applied index) -> the descriptor a replica held there."""
    last: dict[tuple[int, int], Descriptor] = field(default_factory=dict)
    """(node, group) -> the descriptor it last held."""
    destroyed: dict[tuple[int, int], Descriptor] = field(default_factory=dict)
    """(node, group) -> the descriptor a destroyed replica held."""
    resurrected_older: int = 0
    """Replicas created again, after their destruction, at an older epoch (N3)."""
    checks: int = 0

    def start(self, initial: ShardMap) -> None:
        initial.check()
        self.map = ShardMap(list(initial))

    def after_persist(
        self,
        node: int,
        held: Mapping[int, Descriptor | None],
        applied: Mapping[int, tuple[int, ConfState]] | None = None,
    ) -> None:
        """``held``: the node's replicas and their descriptors now (None: an empty
        replica waiting for its snapshot); ``applied``: their applied indexes and the
        memberships recorded there."""
        self.checks += 1
        ds = [(g, d) for g, d in sorted(held.items()) if d is not None]
        for i, (g, d) in enumerate(ds):
            if d.id != g:
                raise SafetyViolation(
                    f"node {node}: group {g} holds the descriptor of {d.describe()}"
                )
            for _g2, d2 in ds[i + 1 :]:
                if d.overlaps(d2):
                    raise SafetyViolation(
                        f"ranges overlap on node {node}: {d.describe()} and {d2.describe()}"
                    )
            gone = self.destroyed.pop((node, g), None)
            if gone is not None and _epoch(d) < _epoch(gone):
                self.resurrected_older += 1
            prior = self.last.get((node, g))
            if prior is not None and _epoch(d) < _epoch(prior):
                raise SafetyViolation(
                    f"node {node}: group {g} went back from {prior.describe()} to {d.describe()}"
                )
            self.last[(node, g)] = d
            if applied is not None and g in applied:
                self._agree(node, g, d, *applied[g])
        self._tiles(ds)

    def forget(self, node: int, group: int) -> None:
        """The node destroyed its replica of ``group``: one created there again is a new
        incarnation (without tombstones, a leader that has not applied the removal may
        create it again from an older snapshot: FINDINGS.md N3)."""
        prior = self.last.pop((node, group), None)
        if prior is not None:
            self.destroyed[(node, group)] = prior

    def _agree(self, node: int, g: int, d: Descriptor, index: int, cs: ConfState) -> None:
        seen = self.desc_at.setdefault((g, index), (d, cs))
        if seen != (d, cs):
            raise SafetyViolation(
                f"node {node} holds {d.describe()} members {_members(d)} with membership "
                f"{_conf(cs)} at index {index} of group {g}; another replica held "
                f"{seen[0].describe()} members {_members(seen[0])} with {_conf(seen[1])} there"
            )
        if _members(d) != _conf(cs)[:2]:
            raise SafetyViolation(
                f"node {node}: the descriptor of group {g} at index {index} lists members "
                f"{_members(d)}, but the group's membership there is {_conf(cs)}"
            )

    def _tiles(self, ds: list[tuple[int, Descriptor]]) -> None:
        for g, d in ds:
            if self.map.get(g) != d:
                self.map.report([d], keep_tiling=False)
        try:
            self.map.check()
        except AssertionError as e:
            shown = ", ".join(d.describe() for d in self.map)
            raise SafetyViolation(f"the newest shard descriptors do not tile: {e} ({shown})") from e


def _members(d: Descriptor) -> tuple[list[int], list[int]]:
    return (sorted(d.voters), sorted(d.learners))


def _conf(cs: ConfState) -> tuple[list[int], list[int], list[int]]:
    return (sorted(cs.voters), sorted(cs.learners), sorted(cs.voters_outgoing))


@dataclass(slots=True)
class MergeChecker:
    committed: dict[tuple[int, Epoch], int] = field(default_factory=dict)
    """(source id, its epoch as prepared) -> the target a CommitMerge applied in."""
    rolled_back: set[tuple[int, Epoch]] = field(default_factory=set)
    checks: int = 0

    def on_admin(self, node: int, group: int, e: Entry, result: int) -> None:
        """An admin entry ``node`` applied in ``group`` with ``result`` (0: refused)."""
        if not result or not shard_cmds.is_admin(e.data):
            return
        try:
            cmd = shard_cmds.decode(e.data)
        except ValueError:
            return
        if isinstance(cmd, shard_cmds.CommitMerge):
            attempt = (cmd.source.id, cmd.source.epoch)
            self.committed[attempt] = group
        elif isinstance(cmd, shard_cmds.RollbackMerge):
            attempt = (group, cmd.source_epoch)
            self.rolled_back.add(attempt)
        else:
            return
        self.checks += 1
        if attempt in self.rolled_back and attempt in self.committed:
            raise SafetyViolation(
                f"node {node} applied {type(cmd).__name__} at index {e.index} of group "
                f"{group}: the merge of shard {attempt[0]} at epoch {attempt[1]} into shard "
                f"{self.committed[attempt]} was both committed and rolled back"
            )


@dataclass(frozen=True, slots=True)
class Write:
    key: bytes
    value: bytes
    group: int
    index: int


@dataclass(slots=True)
class KVModel:
    history: dict[bytes, list[Write]] = field(default_factory=dict)
    """key -> its fresh writes in the order they were first applied (any shard)."""
    outcome: dict[tuple[int, int, int], ApplyResult] = field(default_factory=dict)
    """(group, index, position) -> the result the first replica to apply it got."""
    fresh_at: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    """value -> (group, index) where it was applied fresh."""
    checks: int = 0

    def on_entry(self, node: int, group: int, e: Entry, results: list[ApplyResult]) -> None:
        """The results of one entry's commands as a replica applied it (in batch order,
        one per command). A replica applies an index again only as a new incarnation (it
        was destroyed and added back from an older snapshot: FINDINGS.md N6), so the
        results are matched by their position in this one apply."""
        cmds = decode_entry(e.data).commands
        if len(results) != len(cmds):
            raise SafetyViolation(
                f"node {node} applied index {e.index} of group {group} ({len(cmds)} "
                f"commands) with {len(results)} results: {[_show(r) for r in results]}"
            )
        for pos, (cmd, r) in enumerate(zip(cmds, results, strict=True)):
            self._on_result(node, group, e.index, pos, cmd, r)

    def _on_result(
        self, node: int, group: int, index: int, pos: int, cmd: Command, r: ApplyResult
    ) -> None:
        self.checks += 1
        first = self.outcome.setdefault((group, index, pos), r)
        if first != r:
            raise SafetyViolation(
                f"node {node} applied {cmd} at index {index} of group {group} with "
                f"{_show(r)}, another replica with {_show(first)}"
            )
        if first is not r or not isinstance(cmd, Put) or not r.ok or r.kv is None:
            return
        where = self.fresh_at.setdefault(cmd.value, (group, index))
        if where != (group, index):
            raise SafetyViolation(
                f"write {cmd.value!r} to {cmd.key!r} applied twice: at index {where[1]} of "
                f"group {where[0]} and at index {index} of group {group}"
            )
        hist = self.history.setdefault(cmd.key, [])
        last = hist[-1].value if hist else None
        prev = r.prev.value if r.prev is not None else None
        if prev != last:
            was = f"{hist[-1].value!r} (index {hist[-1].index} of group {hist[-1].group})"
            raise SafetyViolation(
                f"key {cmd.key!r}: write {cmd.value!r} applied at index {index} of group "
                f"{group} found {prev!r}, but the last write applied to the key was "
                f"{was if hist else 'none'}: a write was lost, or two shards took the key"
            )
        hist.append(Write(cmd.key, cmd.value, group, index))

    def check_final(self, node: int, d: Descriptor, kvs: list[KeyValue]) -> None:
        """A converged replica of ``d`` holds exactly the last write of every key in its range."""
        self.checks += 1
        got = {kv.key: kv.value for kv in kvs}
        want = {k: h[-1].value for k, h in self.history.items() if h and d.contains(k)}
        if got != want:
            diff = sorted(
                (k, want.get(k), got.get(k))
                for k in set(got) | set(want)
                if got.get(k) != want.get(k)
            )
            raise SafetyViolation(
                f"node {node} {d.describe()} holds other data than was written "
                f"(key, last written, held): {diff[:5]}"
            )


def _show(r: ApplyResult) -> str:
    prev = r.prev.value if r.prev is not None else None
    kv = r.kv.value if r.kv is not None else None
    return f"ok={r.ok} error={r.error.name} prev={prev!r} now={kv!r}"
