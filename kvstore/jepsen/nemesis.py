"""Nemeses: a seeded schedule of faults, and the code that starts and heals each one.

The schedule is pure (:func:`schedule`, from a ``random.Random``): fault windows that never
overlap, each healed before the time limit, with quiet gaps between them so the cluster can
recover. Which nodes a fault hits is chosen when it starts (isolating the leader needs the
leader of that moment), from the same seeded generator.

Faults (each with a start and a heal):
- ``partition-halves``: two random halves; ``partition-leader``: the leader alone;
  ``partition-ring``: every node hears a majority, no two the same majority;
  ``partition-one``: one random node cut off. All by iptables DROP inside the namespaces.
- ``kill``: kill -9 a minority (the leader half of the time); heal restarts them.
- ``pause``: SIGSTOP a minority (the leader half of the time); heal sends SIGCONT.
- ``clock``: jump the clocks of a minority by -3..+8 s through libfaketime (wall and
  monotonic clocks; our nodes time everything from the event loop's monotonic clock, so a
  forward jump fires every pending timer at once (election and heartbeat storms) and a
  backward jump freezes the node's timers while it keeps answering RPCs); heal jumps back.
- ``loss``: drop 10-40 % of the packets some nodes receive (iptables statistic match).
- ``member``: remove a node (the leader half of the time) through the admin API, stop it
  and wipe its data; heal starts it empty with ``--join``, adds it as a learner and
  promotes it (:mod:`kvstore.jepsen.members`); unsharded clusters only (wiping a node
  would wipe replicas of other shards too). With ``all`` it also runs together with a
  network fault.
- ``shard``: splits at recently written keys, leader transfers and moves of shards
  (:mod:`kvstore.jepsen.shard_nemesis`); only on a sharded cluster (``--shards``).
- ``disk-full``: the (tmpfs) disk of one node fills up; heal frees it.
  ``disk-damage``: stop one node (the leader half of the time), flip a byte in or cut the
  tail of its data file, start it again (it must refuse the damaged data and say so; the
  fault records what it did); heal removes it, wipes it and adds it back
  (:mod:`kvstore.jepsen.disk`); unsharded clusters only, as ``member``.
- ``all``: any of the above that fit the cluster, and three times in ten a network fault
  and a process fault (or a membership change, or sharded a shard operation) together.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from kvstore.jepsen.hosts import Host
from kvstore.jepsen.shard_nemesis import SHARD_FAULTS

PARTITIONS = ("partition-halves", "partition-leader", "partition-ring", "partition-one")
KINDS: dict[str, tuple[str, ...]] = {
    "none": (),
    "partition": PARTITIONS,
    "kill": ("kill",),
    "pause": ("pause",),
    "clock": ("clock",),
    "loss": ("loss",),
    "member": ("member",),
    "shard": SHARD_FAULTS,
    "disk": ("disk-full", "disk-damage"),
    "all": (
        *PARTITIONS,
        *("kill", "pause", "clock", "loss", "member", "disk-full", "disk-damage"),
        *SHARD_FAULTS,
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """One planned fault: ``kind`` from ``start`` to ``end`` (seconds into the workload).

    A combination is written ``net+proc`` (e.g. ``partition-leader+kill``).
    """

    kind: str
    start: float
    end: float


def schedule(
    nemesis: str,
    time_limit: float,
    interval: float,
    rng: random.Random,
    *,
    sharded: bool = False,
    unsupported: tuple[str, ...] = (),
) -> list[Window]:
    """Fault windows for a run. ``interval``: mean seconds a fault lasts (and between faults).
    ``sharded``: the cluster has shards (then the faults that wipe a node are left out,
    else the shard faults are). ``unsupported``: faults the hosts cannot make (left out)."""
    left_out = (("member", "disk-damage") if sharded else SHARD_FAULTS) + unsupported
    kinds = tuple(k for k in KINDS[nemesis] if k not in left_out)
    procs = tuple(
        k for k in ("kill", "pause", "clock", "member", *SHARD_FAULTS) if k not in left_out
    )
    if not kinds or interval <= 0:
        return []
    out: list[Window] = []
    t = rng.uniform(0.3, 0.7) * interval
    while True:
        length = rng.uniform(0.6, 1.4) * interval
        if t + length > time_limit - 0.5 * interval:
            break
        kind = rng.choice(kinds)
        if nemesis == "all" and rng.random() < 0.3:
            # a combination: a network fault and a process fault at once
            net = rng.choice((*PARTITIONS, "loss"))
            proc = rng.choice(procs)
            kind = f"{net}+{proc}"
        out.append(Window(kind=kind, start=t, end=t + length))
        t += length + rng.uniform(0.5, 1.0) * interval
    return out


def halves(hosts: Sequence[Host], rng: random.Random) -> list[list[Host]]:
    shuffled = list(hosts)
    rng.shuffle(shuffled)
    cut = len(shuffled) // 2
    return [shuffled[:cut], shuffled[cut:]]


def ring_views(hosts: Sequence[Host], rng: random.Random) -> dict[Host, list[Host]]:
    """For each host, the majority it still hears: itself and the next hosts on a ring."""
    order = list(hosts)
    rng.shuffle(order)
    n = len(order)
    majority = n // 2 + 1
    return {order[i]: [order[(i + k) % n] for k in range(majority)] for i in range(n)}


def minority(hosts: Sequence[Host], leader: Host | None, rng: random.Random) -> list[Host]:
    """A random non-empty minority, holding the leader half of the time when known."""
    size = rng.randint(1, max(1, (len(hosts) - 1) // 2))
    pool = list(hosts)
    chosen: list[Host] = []
    if leader is not None and rng.random() < 0.5:
        chosen.append(leader)
        pool.remove(leader)
    rng.shuffle(pool)
    chosen += pool[: size - len(chosen)]
    return sorted(chosen, key=lambda h: h.index)


class Faults(Protocol):
    """What the nemesis needs from the network (hosts.Network, deployments.BridgeFaults)."""

    hosts: list[Host]

    def cut(self, host: Host, others: Sequence[Host]) -> None: ...

    def partition(self, components: Sequence[Sequence[Host]]) -> None: ...

    def lose(self, host: Host, probability: float) -> None: ...

    def heal(self, hosts: Sequence[Host] | None = None) -> None: ...


class Processes(Protocol):
    """What the nemesis needs from the cluster of node processes."""

    def kill(self, host: Host) -> None: ...

    def restart(self, host: Host) -> None: ...

    def pause(self, host: Host) -> None: ...

    def resume(self, host: Host) -> None: ...

    def set_clock_offset(self, host: Host, seconds: float) -> None: ...

    def fill_disk(self, host: Host) -> str: ...

    def free_disk(self, host: Host) -> None: ...

    def damage(self, host: Host, rng: random.Random) -> str: ...


class MemberOps(Protocol):
    """Membership changes, as an operator makes them (kvstore.jepsen.members.Members)."""

    def remove(self, host: Host) -> str: ...

    def add_back(self, host: Host) -> str: ...


class Undo(enum.Enum):
    """What healing a started fault takes."""

    NETWORK = "network healed"  # flush the rules of every host
    RESTART = "restarted"
    RESUME = "SIGCONT"
    CLOCK = "clock reset"
    MEMBER = "added back"
    DISK = "disk freed"
    REJOIN = "wiped and added back"


def _names(hosts: Sequence[Host]) -> str:
    return "{" + ",".join(f"n{h.index}" for h in sorted(hosts, key=lambda h: h.index)) + "}"


class Nemesis:
    """Starts and heals faults on a live cluster; one fault at a time."""

    def __init__(
        self,
        net: Faults,
        procs: Processes,
        rng: random.Random,
        members: MemberOps | None = None,
    ) -> None:
        self.net = net
        self.procs = procs
        self.rng = rng
        self.members = members
        self._heal: list[tuple[Undo, Host]] = []

    def start(self, kind: str, leader: Host | None = None) -> str:
        """Starts a fault (or a ``+`` combination); returns what it did, for the history.

        ``leader``: the current leader if known (the caller asks the cluster).
        """
        return "; ".join(self._start_one(k, leader) for k in kind.split("+"))

    def _start_one(self, kind: str, leader: Host | None) -> str:
        hosts, rng = self.net.hosts, self.rng
        if kind == "partition-halves":
            comps = halves(hosts, rng)
            self.net.partition(comps)
            self._heal.append((Undo.NETWORK, hosts[0]))
            return " | ".join(_names(c) for c in comps)
        if kind == "partition-leader":
            alone = leader or rng.choice(hosts)
            self.net.partition([[alone], [h for h in hosts if h != alone]])
            self._heal.append((Undo.NETWORK, hosts[0]))
            return f"isolated {'leader' if leader else 'node'} n{alone.index}"
        if kind == "partition-ring":
            views = ring_views(hosts, rng)
            for h, sees in views.items():
                self.net.cut(h, [o for o in hosts if o not in sees])
            self._heal.append((Undo.NETWORK, hosts[0]))
            return "ring " + " ".join(f"n{h.index}<-{_names(v)}" for h, v in views.items())
        if kind == "partition-one":
            one = rng.choice(hosts)
            self.net.partition([[one], [h for h in hosts if h != one]])
            self._heal.append((Undo.NETWORK, hosts[0]))
            return f"cut off n{one.index}"
        if kind == "loss":
            targets = [h for h in hosts if rng.random() < 0.5] or [rng.choice(hosts)]
            p = rng.uniform(0.1, 0.4)
            for h in targets:
                self.net.lose(h, p)
            self._heal.append((Undo.NETWORK, hosts[0]))
            return f"drop {p:.0%} of packets into {_names(targets)}"
        if kind == "member":
            if self.members is None:
                raise ValueError("the member nemesis needs membership operations")
            others = [h for h in hosts if h != leader]
            victim = leader if leader is not None and rng.random() < 0.5 else rng.choice(others)
            self._heal.append((Undo.MEMBER, victim))
            return self.members.remove(victim)
        if kind == "disk-full":
            one = rng.choice(hosts)
            self._heal.append((Undo.DISK, one))
            return f"n{one.index}: {self.procs.fill_disk(one)}"
        if kind == "disk-damage":
            if self.members is None:
                raise ValueError("the disk nemesis needs membership operations")
            one = leader if leader is not None and rng.random() < 0.5 else rng.choice(hosts)
            self._heal.append((Undo.REJOIN, one))
            return self.procs.damage(one, rng)
        targets = minority(hosts, leader, rng)
        if kind == "kill":
            for h in targets:
                self.procs.kill(h)
                self._heal.append((Undo.RESTART, h))
            return f"{self._name('kill', 'kill -9')} {_names(targets)}"
        if kind == "pause":
            for h in targets:
                self.procs.pause(h)
                self._heal.append((Undo.RESUME, h))
            return f"{self._name('pause', 'SIGSTOP')} {_names(targets)}"
        if kind == "clock":
            parts = []
            for h in targets:
                offset = rng.choice((-1, 1)) * rng.uniform(0.5, 3.0)
                if offset > 0:
                    offset *= 8 / 3
                self.procs.set_clock_offset(h, offset)
                self._heal.append((Undo.CLOCK, h))
                parts.append(f"n{h.index}{offset:+.1f}s")
            return "clock " + " ".join(parts)
        raise ValueError(f"unknown fault {kind!r}")

    def _name(self, fault: str, default: str) -> str:
        """How the hosts make a fault, for the history (deployments: ``docker pause``...)."""
        names: dict[str, str] = getattr(self.procs, "fault_names", {})
        return names.get(fault, default)

    def heal(self) -> str:
        """Undoes whatever is in force (safe to call when nothing is)."""
        done = []
        for undo, host in self._heal:
            if undo is Undo.NETWORK:
                self.net.heal()
                done.append(undo.value)
                continue
            if undo is Undo.RESTART:
                self.procs.restart(host)
            elif undo is Undo.RESUME:
                self.procs.resume(host)
            elif undo is Undo.MEMBER:
                assert self.members is not None
                done.append(self.members.add_back(host))
                continue
            elif undo is Undo.DISK:
                self.procs.free_disk(host)
            elif undo is Undo.REJOIN:
                assert self.members is not None
                done.append(self.members.remove(host))
                done.append(self.members.add_back(host))
                continue
            else:
                self.procs.set_clock_offset(host, 0.0)
            what = {Undo.RESTART: "restart", Undo.RESUME: "resume"}.get(undo, "")
            done.append(f"{self._name(what, undo.value)} n{host.index}")
        self._heal.clear()
        return ", ".join(dict.fromkeys(done)) or "nothing to heal"
