"""One Jepsen run: hosts, nodes, clients, faults, final reads, checks, report.

Sequence: clean leftovers and take the run lock; create the hosts; start a node in each;
wait until the cluster takes a write; run the workers and the nemesis schedule for the time
limit; heal everything (network, paused, killed, clocks); read every key with a strong read
(retrying while the cluster recovers); tear down; check; write the report.

Invariant: the hosts, rules and node processes are removed on every exit path (the context
managers of :mod:`hosts` and :mod:`cluster`), and the next run removes any leftovers of a
run that was killed outright. Exit codes of :func:`run_cli`: 0 valid, 1 anomaly, 2 harness
failure (including a run that completed no operation, which proves nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kvstore.jepsen.checker.linearizable import check as check_linearizable
from kvstore.jepsen.checker.lostwrite import check_appends
from kvstore.jepsen.checker.models import RegisterModel
from kvstore.jepsen.checker.session import check_sessions
from kvstore.jepsen.cluster import ClientTLS, Cluster, NodeSpec
from kvstore.jepsen.deployments import UNSUPPORTED, open_deployment
from kvstore.jepsen.history import NEMESIS, Event, Value, pair, write_jsonl
from kvstore.jepsen.hosts import HarnessError, Host, Network, require_root, run_lock
from kvstore.jepsen.members import Members
from kvstore.jepsen.nemesis import KINDS, Faults, Nemesis, Processes, Window, schedule
from kvstore.jepsen.report import write_report
from kvstore.jepsen.shard_nemesis import SHARD_FAULTS, ClientAdmin, ShardNemesis
from kvstore.jepsen.workloads import Recorder, Store, Workload, final_reads, make, run_worker

FINAL_PROCESS = 1_000_000
"""The process number of the final reads (after every worker's possible renumbering)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    nodes: int = 5
    consensus: str = "raft"
    workload: str = "register"
    nemesis: str = "none"
    time_limit: float = 60.0
    concurrency: int = 10
    read_mode: str | None = None
    seed: int | None = None
    out: Path | None = None
    keys: int | None = None
    interval: float = 5.0
    unsafe_ack: bool = False
    server_cmd: str | None = None
    shards: int = 0
    replicas: int = 3
    tls: bool = False
    op_timeout: float = 2.0
    recovery: float = 60.0
    check_timeout: float = 60.0
    hosts: str = "netns"
    """netns (namespaces the harness makes), compose or vms (kvstore.jepsen.deployments)."""

    def effective_read_mode(self) -> str:
        if self.read_mode:
            return self.read_mode
        return "causal" if self.workload == "session" else "strong"


@dataclass(slots=True, kw_only=True)
class RunResult:
    verdict: str  # valid | invalid | unknown
    out: Path
    anomalies: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


Progress = Callable[[str], None]


class Nodes(Processes, Protocol):
    """What a run drives: the namespace Cluster or a deployment (compose, VMs)."""

    hosts: list[Host]

    @property
    def endpoints(self) -> list[str]: ...

    @property
    def client_options(self) -> ClientTLS: ...

    def heal_all(self) -> None: ...


def _leader_host(statuses: Sequence[dict[str, Any]], hosts: Sequence[Host]) -> Host | None:
    by_id = {h.index: h for h in hosts}
    for st in statuses:
        for g in st.get("groups", []):
            if g.get("role") == "leader":
                return by_id.get(int(st.get("id", 0)))
    return None


async def _find_leader(client: Any, hosts: Sequence[Host]) -> Host | None:
    try:
        statuses = await asyncio.wait_for(client.status(), 3.0)
    except Exception:
        return None
    return _leader_host(statuses, hosts)


async def _await_ready(store: Store, timeout: float, attempt: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            await asyncio.wait_for(store.put("jepsen-ready", "1"), attempt)
            return
        except Exception as e:
            last = e
            await asyncio.sleep(0.3)
    raise HarnessError(f"the cluster took no write within {timeout:.0f}s (last error: {last})")


async def _sleep_until(recorder: Recorder, t: float) -> None:
    delay = t - recorder.now()
    if delay > 0:
        await asyncio.sleep(delay)


async def _run_nemesis(
    plan: Sequence[Window],
    nemesis: Nemesis,
    recorder: Recorder,
    client: Any,
    hosts: Sequence[Host],
    progress: Progress,
    shard: ShardNemesis | None = None,
) -> None:
    for w in plan:
        await _sleep_until(recorder, w.start)
        leader = await _find_leader(client, hosts)
        began = recorder.now()
        parts = w.kind.split("+")
        procs = "+".join(k for k in parts if k not in SHARD_FAULTS)
        burst = [k for k in parts if k in SHARD_FAULTS]
        descs = [await asyncio.to_thread(nemesis.start, procs, leader)] if procs else []
        if burst and shard is not None:
            descs.append(await shard.act(burst[0]))
        desc = "; ".join(descs)
        recorder.insert(Event(type="invoke", process=NEMESIS, f=w.kind, value=desc, time=began))
        progress(f"[{recorder.now():6.1f}s] fault {w.kind}: {desc}")
        more: list[str] = []
        if burst and shard is not None:
            more = await shard.burst(burst[0], recorder.now, w.end)
            for d in more:
                progress(f"  {d}")
        await _sleep_until(recorder, w.end)
        healed = await asyncio.to_thread(nemesis.heal)
        if more:
            healed = "; ".join([*more, healed])
        recorder.record("ok", NEMESIS, w.kind, None, healed)
        progress(f"[{recorder.now():6.1f}s] healed: {healed}")


def _recent_writes(recorder: Recorder, window: int = 200) -> list[str]:
    """Keys of the writes among the last ``window`` events, oldest first."""
    return [
        ev.key
        for ev in recorder.events[-window:]
        if ev.type == "invoke" and ev.key is not None and ev.f in ("write", "append", "cas")
    ]


async def _report_progress(recorder: Recorder, progress: Progress, every: float = 5.0) -> None:
    while True:
        await asyncio.sleep(every)
        c = Counter(ev.type for ev in recorder.events if ev.process != NEMESIS)
        progress(
            f"[{recorder.now():6.1f}s] {c['ok']} ok, {c['fail']} fail, {c['info']} info, "
            f"{c['invoke'] - c['ok'] - c['fail'] - c['info']} in flight"
        )


async def drive(
    cfg: RunConfig,
    *,
    net: Faults,
    cluster: Nodes,
    workload: Workload,
    seed: int,
    progress: Progress,
) -> tuple[Recorder, dict[str, Value]]:
    """Runs the workload and the nemesis against a started cluster; returns the history."""
    from kvstore.client import AsyncClient

    rng = random.Random(seed)
    plan = schedule(
        cfg.nemesis,
        cfg.time_limit,
        cfg.interval,
        random.Random(rng.random()),
        sharded=cfg.shards > 0,
        unsupported=UNSUPPORTED if cfg.hosts != "netns" else (),
    )
    members = Members(cluster, cfg.op_timeout) if isinstance(cluster, Cluster) else None
    nemesis = Nemesis(net, cluster, random.Random(rng.random()), members)
    # Each client process reads from its own node, as Jepsen binds clients to nodes: which
    # replica a process's eventual/causal reads hit is part of the seeded run.
    clients = [
        AsyncClient(cluster.endpoints, timeout=cfg.op_timeout, replica=i, **cluster.client_options)
        for i in range(cfg.concurrency)
    ]
    admin = AsyncClient(cluster.endpoints, timeout=cfg.op_timeout, **cluster.client_options)
    recorder = Recorder()
    # drawn after the others: adding it left the seeded schedules of unsharded runs alone
    shard_rng = random.Random(rng.random()) if cfg.shards else None
    final: dict[str, Value] = {}
    try:
        progress(f"waiting for the cluster at {', '.join(cluster.endpoints)}")
        # emulated VMs on a loaded host: one write can take longer than 5 s
        await _await_ready(admin, max(60.0, cfg.recovery), max(5.0, 3 * cfg.op_timeout))
        recorder = Recorder()
        progress(
            f"running {cfg.workload} for {cfg.time_limit:.0f}s with {cfg.concurrency} workers, "
            f"read mode {cfg.effective_read_mode()}, {len(plan)} faults planned"
        )
        ticker = asyncio.create_task(_report_progress(recorder, progress))
        rec = recorder
        shard = (
            ShardNemesis(ClientAdmin(admin), lambda: _recent_writes(rec), shard_rng)
            if shard_rng is not None
            else None
        )
        nem = asyncio.create_task(
            _run_nemesis(plan, nemesis, recorder, admin, net.hosts, progress, shard)
        )
        try:
            await asyncio.gather(
                *(
                    run_worker(
                        worker=w,
                        concurrency=cfg.concurrency,
                        workload=workload,
                        store=clients[w],
                        recorder=recorder,
                        read_mode=cfg.effective_read_mode(),
                        until=cfg.time_limit,
                        op_timeout=cfg.op_timeout + 1.0,
                        rng=random.Random(rng.random()),
                    )
                    for w in range(cfg.concurrency)
                )
            )
            await nem
        finally:
            nem.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await nem
            healed = await asyncio.to_thread(_heal_everything, nemesis, cluster, net)
            if any(ev.process == NEMESIS for ev in recorder.events) and (
                recorder.events and _open_fault(recorder.events)
            ):
                recorder.record("ok", NEMESIS, "heal", None, healed)
            ticker.cancel()
        progress(f"[{recorder.now():6.1f}s] healed everything; final strong reads")
        final = await final_reads(
            keys=workload.keys,
            workload=workload,
            store=admin,
            recorder=recorder,
            process=FINAL_PROCESS,
            deadline=recorder.now() + cfg.recovery,
            op_timeout=cfg.op_timeout + 1.0,
        )
    finally:
        for c in [*clients, admin]:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.close(), 2.0)
    return recorder, final


def crashes(nodes_dir: Path, hosts: Sequence[Host]) -> list[str]:
    """The first CRITICAL line of each node's log (a crashed driver: the process may live on
    and the cluster may still be valid, but a node must never crash)."""
    out = []
    for h in hosts:
        log = nodes_dir / f"n{h.index}.log"
        try:
            lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if "level=CRITICAL" in line:
                out.append(f"node n{h.index} crashed: {line.split(' traceback=')[0][:300]}")
                break
    return out


def _open_fault(events: Sequence[Event]) -> bool:
    state = False
    for ev in events:
        if ev.process == NEMESIS:
            state = ev.type == "invoke"
    return state


def _heal_everything(nemesis: Nemesis, cluster: Nodes, net: Faults) -> str:
    done = nemesis.heal()
    net.heal()
    cluster.heal_all()
    return done


def check_history(
    cfg: RunConfig, events: Sequence[Event], final: dict[str, Value], workload: Workload
) -> tuple[str, list[str], dict[str, float]]:
    """Runs the checkers that apply; returns (verdict, anomaly texts, seconds per checker)."""
    ops = pair(events)
    anomalies: list[str] = []
    seconds: dict[str, float] = {}
    undecided = False
    model = workload.model
    if workload.name == "session" and cfg.effective_read_mode() == "strong":
        model = RegisterModel()
    if model is not None:
        t0 = time.monotonic()
        # in this process (grpc's threads make forking workers unwise); keys still take turns
        result = check_linearizable(
            ops, model, timeout=cfg.check_timeout, shrink_budget=30.0, workers=1
        )
        seconds["linearizability"] = time.monotonic() - t0
        for f in result.failures:
            lines = [
                f"not linearizable on key {f.key!r}: these {len(f.window)} operations "
                "cannot be ordered:"
            ]
            lines += [f"    {op.describe()}" for op in f.window]
            anomalies.append("\n".join(lines))
        if result.timed_out_keys:
            undecided = True
            anomalies.append(f"linearizability search timed out on keys {result.timed_out_keys}")
    if workload.name == "append":
        t0 = time.monotonic()
        anomalies += [a.describe() for a in check_appends(events, final, workload.keys)]
        seconds["lost-writes"] = time.monotonic() - t0
    if workload.name == "lock":
        from kvstore.jepsen.lock_workload import check_lock

        anomalies += check_lock(events, final)
    if workload.name == "watch":
        from kvstore.jepsen.watch_workload import check_watch

        t0 = time.monotonic()
        anomalies += check_watch(events)
        seconds["watch"] = time.monotonic() - t0
    if workload.name == "session":
        t0 = time.monotonic()
        found = check_sessions(ops, cfg.concurrency, final)
        anomalies += [a.describe() for a in found]
        seconds["sessions"] = time.monotonic() - t0
    if anomalies and not (undecided and len(anomalies) == 1):
        return "invalid", anomalies, seconds
    return ("unknown" if undecided else "valid"), anomalies, seconds


def _lock_findings(events: Sequence[Event]) -> dict[str, Any]:
    from kvstore.jepsen.lock_workload import findings

    return findings(events)


def run(cfg: RunConfig, progress: Progress = print) -> RunResult:
    if cfg.nemesis not in KINDS:
        raise HarnessError(f"unknown nemesis {cfg.nemesis!r}")
    if cfg.shards < 0 or cfg.replicas < 1:
        raise HarnessError(
            f"--shards must be >= 0 and --replicas >= 1 (got {cfg.shards}, {cfg.replicas})"
        )
    if cfg.nemesis == "shard" and not cfg.shards:
        raise HarnessError("the shard nemesis needs a sharded cluster: add --shards K")
    if cfg.nemesis == "member" and cfg.shards:
        raise HarnessError("the member nemesis runs on unsharded clusters only (drop --shards)")
    if cfg.hosts != "netns" and (
        set(KINDS[cfg.nemesis]) <= set(UNSUPPORTED) and KINDS[cfg.nemesis]
    ):
        raise HarnessError(f"--hosts {cfg.hosts} cannot run the {cfg.nemesis} nemesis")
    if cfg.hosts != "netns" and (cfg.server_cmd or cfg.unsafe_ack):
        raise HarnessError(f"--hosts {cfg.hosts} runs the deployment's own image")
    require_root()
    seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(1 << 31)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = cfg.out or Path("jepsen-runs") / f"{stamp}-{cfg.workload}-{cfg.nemesis}-{seed}"
    out.mkdir(parents=True, exist_ok=True)
    progress(f"kvstore jepsen run: seed {seed}, report in {out}")
    workload = make(
        cfg.workload, keys=cfg.keys or max(2, cfg.concurrency // 2), concurrency=cfg.concurrency
    )
    spec = NodeSpec(
        consensus=cfg.consensus,
        server_cmd=cfg.server_cmd,
        module="kvstore.jepsen.unsafe_node" if cfg.unsafe_ack else "kvstore.cli",
        clock="clock" in KINDS[cfg.nemesis],
        shards=cfg.shards,
        replicas=cfg.replicas,
        tls=cfg.tls,
        disk_mb=256 if "disk-full" in KINDS[cfg.nemesis] else 0,
    )
    t_start = time.monotonic()
    if cfg.hosts == "netns":
        with run_lock(), Network(cfg.nodes) as net, Cluster(net.hosts, out, spec) as cluster:
            progress(f"hosts up: {', '.join(f'n{h.index}={h.ip}' for h in net.hosts)}")
            cluster.start_all()
            cluster.wait_listening()
            recorder, final = asyncio.run(
                drive(
                    cfg, net=net, cluster=cluster, workload=workload, seed=seed, progress=progress
                )
            )
            died = cluster.exited()
        hosts = list(net.hosts)
    else:
        with open_deployment(
            cfg.hosts, cfg.nodes, out, shards=cfg.shards, replicas=cfg.replicas, tls=cfg.tls
        ) as dep:
            progress(f"bringing up the {cfg.hosts} deployment ({cfg.nodes} nodes)")
            dep.start_all()
            assert dep.faults is not None
            progress(f"hosts up: {', '.join(f'n{i}={ip}' for i, ip in sorted(dep.ips.items()))}")
            dep.wait_listening(max(60.0, cfg.recovery))
            recorder, final = asyncio.run(
                drive(
                    cfg,
                    net=dep.faults,
                    cluster=dep,
                    workload=workload,
                    seed=seed,
                    progress=progress,
                )
            )
            died = dep.exited()
        hosts = list(dep.hosts)
    for h in hosts:
        shutil.rmtree(out / "nodes" / f"n{h.index}" / "data", ignore_errors=True)
    events = recorder.events
    with (out / "history.jsonl").open("w", encoding="utf-8") as fh:
        write_jsonl(events, fh)
    progress(f"checking {len(events)} events")
    verdict, anomalies, seconds = check_history(cfg, events, final, workload)
    counts = Counter(ev.type for ev in events if ev.process not in (NEMESIS, FINAL_PROCESS))
    if counts["ok"] == 0:
        verdict = "unknown"
        anomalies.append("no operation completed: the run tested nothing")
    for h, code in died:
        anomalies.append(f"node n{h.index} exited on its own with code {code}")
    anomalies += crashes(out / "nodes", hosts)
    seconds["run"] = time.monotonic() - t_start
    result = RunResult(
        verdict=verdict,
        out=out,
        anomalies=anomalies,
        counts={k: counts[k] for k in ("invoke", "ok", "fail", "info")},
        seconds=seconds,
    )
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    (out / "results.json").write_text(
        json.dumps(
            {
                "verdict": verdict,
                "seed": seed,
                "started_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(recorder.wall0)),
                "config": config,
                "counts": result.counts,
                "seconds": seconds,
                "anomalies": anomalies,
                "final": {k: v for k, v in final.items()},
                **({"lock": _lock_findings(events)} if cfg.workload == "lock" else {}),
            },
            indent=2,
            default=str,
        )
    )
    summary = [
        (
            "workload",
            f"{cfg.workload} ({cfg.effective_read_mode()} reads, {len(workload.keys)} keys)",
        ),
        ("nemesis", cfg.nemesis),
        (
            "cluster",
            f"{cfg.nodes} nodes ({cfg.hosts}), {cfg.consensus}"
            + (f", {cfg.shards} shards x {cfg.replicas} replicas" if cfg.shards else "")
            + (", UNSAFE ack" if cfg.unsafe_ack else ""),
        ),
        ("time limit", f"{cfg.time_limit:.0f}s, {cfg.concurrency} workers, seed {seed}"),
        ("time 0", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(recorder.wall0))),
        ("operations", ", ".join(f"{k} {v}" for k, v in result.counts.items())),
        ("checker time", ", ".join(f"{k} {v:.2f}s" for k, v in seconds.items())),
    ]
    write_report(
        out,
        title=f"kvstore jepsen {cfg.workload} / {cfg.nemesis}",
        verdict=verdict,
        summary=summary,
        anomalies=anomalies,
        events=events,
        concurrency=cfg.concurrency,
    )
    return result


def run_cli(cfg: RunConfig) -> int:
    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        result = run(cfg, progress=lambda s: print(s, flush=True))
    except HarnessError as e:
        print(f"kvstore jepsen run: harness failure: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kvstore jepsen run: interrupted (cleaned up)", file=sys.stderr)
        return 2
    for a in result.anomalies:
        print(a)
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    print(f"verdict: {result.verdict} ({counts}); report: {result.out / 'report.html'}")
    return {"valid": 0, "invalid": 1}.get(result.verdict, 2)
