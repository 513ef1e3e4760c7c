"""Process assembly: storage, driver, transport, gRPC server, health and metrics for one node.

Rule: a node refuses to start on a data directory of another cluster, node id or
consensus kind (the identity is stored in the storage meta on first start).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kvstore._pb import admin_pb2_grpc, kv_pb2_grpc, peer_pb2_grpc
from kvstore.node import log
from kvstore.node.autosplit import AutoSplitter
from kvstore.node.driver import DriverConfig, NodeDriver
from kvstore.node.lease_expiry import LeaseExpiry
from kvstore.node.limits import Limits
from kvstore.node.merge_coordinator import MergeCoordinator
from kvstore.node.meta import MetaClient
from kvstore.node.metrics import NodeMetrics
from kvstore.node.placement_loop import PlacementLoop
from kvstore.node.reporter import Reporter
from kvstore.node.routing import LocalRouter
from kvstore.node.snapshot_recv import SnapshotReceiver
from kvstore.node.snapshot_send import SnapshotSender
from kvstore.node.transport import PeerTransport
from kvstore.node.zombies import ZombieReaper
from kvstore.security.tls import TLSError, TLSFiles
from kvstore.server import sharding
from kvstore.server.admin import AdminService
from kvstore.server.kv import KVService
from kvstore.server.peer import PeerService
from kvstore.server.shard_admin import split_shard
from kvstore.shard.descriptor import Descriptor
from kvstore.shard.split import DEFAULT_SPLIT_KEY_COUNT, DEFAULT_SPLIT_SIZE
from kvstore.storage import NodeStorage
from kvstore.storage.history import DEFAULT_HISTORY_REVISIONS


class StartupError(Exception):
    """The node cannot start with this configuration (message says why and what to do)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeOptions:
    id: int
    listen: str
    peers: dict[int, str]
    data_dir: str
    metrics_port: int = 0
    consensus: str = "raft"
    cluster_id: str = "kvstore"
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    snapshot_entries: int = 10000
    snapshot_log_mb: int = 32
    map_size_mb: int = 1024
    sync: bool = True
    unsafe_ack_before_commit: bool = False
    join: bool = False
    inline_persist: bool = False
    """Start with no membership and wait to be added (``kvstore member add-learner``)."""
    shards: int = 0
    """> 0: bootstrap a sharded cluster pre-split into this many shards (docs/sharding.md);
    0: one group owning the whole key space, as before sharding."""
    replicas: int = 3
    split_keys: tuple[bytes, ...] | None = None
    tls: TLSFiles = field(default_factory=TLSFiles)
    """etcd's --cert-file ... --peer-trusted-ca-file (security/tls.py); empty: plaintext."""
    down_after: float = 30.0
    """Seconds a node must be judged down before placement replaces its replicas."""
    split_size: int = DEFAULT_SPLIT_SIZE
    """A shard led here whose keys and values pass this many bytes is split (0: never)."""
    split_key_count: int = DEFAULT_SPLIT_KEY_COUNT
    """... or that holds more than this many keys (0: never)."""
    history_revisions: int = DEFAULT_HISTORY_REVISIONS
    """Revisions of history each shard keeps for gets at a revision and watches (0: all,
    until ``kvstore compact``; storage/history.py)."""
    log_level: str = "INFO"
    log_format: str = "text"
    """text (key=value) or json; ``run`` sets the process's logging up with both."""

    def __post_init__(self) -> None:
        """The same limits the command line checks, for nodes built in code: nothing
        invalid may reach the data directory (its identity is written on first start)."""
        problems = [
            f"{name} must be {rule}, got {value!r}"
            for name, value, ok, rule in (
                ("id", self.id, self.id >= 1, ">= 1"),
                ("consensus", self.consensus, self.consensus in ("raft", "paxos"), "raft or paxos"),
                ("cluster_id", self.cluster_id, bool(self.cluster_id), "non-empty"),
                ("tick_ms", self.tick_ms, self.tick_ms >= 1, ">= 1"),
                ("election_ticks", self.election_ticks, self.election_ticks >= 2, ">= 2"),
                ("heartbeat_ticks", self.heartbeat_ticks, self.heartbeat_ticks >= 1, ">= 1"),
                (
                    "heartbeat_ticks",
                    self.heartbeat_ticks,
                    self.heartbeat_ticks < self.election_ticks,
                    f"below election_ticks ({self.election_ticks})",
                ),
                ("snapshot_entries", self.snapshot_entries, self.snapshot_entries >= 0, ">= 0"),
                ("snapshot_log_mb", self.snapshot_log_mb, self.snapshot_log_mb >= 0, ">= 0"),
                ("map_size_mb", self.map_size_mb, self.map_size_mb >= 1, ">= 1"),
                ("metrics_port", self.metrics_port, 0 <= self.metrics_port < 65536, "0..65535"),
                ("shards", self.shards, 0 <= self.shards <= 676, "0..676"),
                ("replicas", self.replicas, self.replicas >= 1, ">= 1"),
                ("down_after", self.down_after, 0 < self.down_after < 1e9, "> 0 seconds"),
                ("split_size", self.split_size, self.split_size >= 0, ">= 0"),
                ("split_key_count", self.split_key_count, self.split_key_count >= 0, ">= 0"),
                ("history_revisions", self.history_revisions, self.history_revisions >= 0, ">= 0"),
                (
                    "split_keys",
                    self.split_keys,
                    self.split_keys is None or len(self.split_keys) == max(self.shards - 1, 0),
                    "one fewer than --shards",
                ),
                (
                    "split_keys",
                    self.split_keys,
                    self.split_keys is None
                    or (
                        all(self.split_keys)
                        and list(self.split_keys) == sorted(set(self.split_keys))
                    ),
                    "non-empty and strictly increasing",
                ),
            )
            if not ok
        ]
        problems += self.tls.problems()
        if problems:
            raise ValueError("; ".join(problems))


HEALTH_SERVICE = "kvstore.v1.KV"
"""Health is reported for the server ("") and under this service name, alike."""

WATCH_PERIOD_S = 0.5
STOP_STEP_S = 10.0
"""How long stop() waits for each part before it logs the part and goes on."""


def listen_host(listen: str) -> str:
    """The host part of a --listen HOST:PORT ("[::1]:7001" -> "::1"; ":7001" -> all)."""
    host = listen.rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0"


def parse_peers(spec: str) -> dict[int, str]:
    """``1=h:p,2=h:p`` -> {1: "h:p", 2: "h:p"}."""
    out: dict[int, str] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        ident, sep, addr = part.partition("=")
        if not sep or not ident.strip().isdigit() or ":" not in addr:
            raise ValueError(f"bad peer {part!r}: expected ID=HOST:PORT")
        out[int(ident)] = addr.strip()
    return out


def check_identity(storage: NodeStorage, opts: ServeOptions) -> bool:
    """Record or verify (cluster id, node id, consensus); True when the node is new."""
    want = {
        b"cluster_id": opts.cluster_id.encode(),
        b"node_id": str(opts.id).encode(),
        b"consensus": opts.consensus.encode(),
    }
    have = {k: storage.get_meta(k) for k in want}
    if all(v is None for v in have.values()):
        return True
    for k, v in want.items():
        h = have[k]
        if h != v:
            got = h.decode(errors="replace") if h is not None else "<none>"
            raise StartupError(
                f"data dir {opts.data_dir} belongs to {k.decode()}={got}, "
                f"but this node was started with {k.decode()}={v.decode()}; "
                "use the matching flags or another --data-dir"
            )
    return False


class Node:
    """One running node; ``start()`` then ``stop()`` (or ``run_until_signal``)."""

    def __init__(self, opts: ServeOptions) -> None:
        self.opts = opts
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.failed = asyncio.Event()
        """Set when the driver crashed: the process should stop and exit non-zero."""
        self._watcher: asyncio.Task[None] | None = None
        self._metrics_http: tuple[Any, threading.Thread] | None = None
        self._health_status: int | None = None

    async def start(self) -> None:
        o = self.opts
        if o.consensus == "paxos":
            try:
                import kvstore.consensus.paxos  # noqa: F401
            except ImportError as e:
                raise StartupError(f"consensus 'paxos' is not available: {e}") from e
        os.makedirs(o.data_dir, exist_ok=True)
        self.storage = NodeStorage(o.data_dir, map_size=o.map_size_mb << 20, sync=o.sync)
        self.storage.history_revisions = o.history_revisions
        try:
            new = check_identity(self.storage, o)
        except StartupError:
            self.storage.close()
            raise
        # Members added by conf changes keep the address the log gave them, whatever
        # --peers says (it lists the founding members; issue 11 point 7).
        endpoints = {**o.peers, **self.storage.group(1).member_addresses()}
        # How others reach this node: its --peers entry (an advertised address) if any.
        endpoints.setdefault(o.id, o.listen)
        if new:
            voters = frozenset() if o.join else frozenset(endpoints)
            if o.shards > 0 and not o.join:
                sharding.bootstrap(
                    self.storage, o.id, sorted(endpoints), o.shards, o.replicas, o.split_keys
                )
            elif voters:
                self.storage.group(1).bootstrap(voters)
            with self.storage.write() as w:
                w.set_meta(b"cluster_id", o.cluster_id.encode())
                w.set_meta(b"node_id", str(o.id).encode())
                w.set_meta(b"consensus", o.consensus.encode())
            log.event("bootstrapped", voters=sorted(voters), cluster=o.cluster_id)
        try:
            tls = o.tls.load()
        except TLSError as e:
            self.storage.close()
            raise StartupError(str(e)) from None
        peer_tls = tls.peer if tls is not None else None
        shard_info = sharding.load(self.storage)
        groups = sharding.hosted_groups(self.storage) if shard_info.sharded else (1,)
        self.metrics = NodeMetrics()
        self.driver = NodeDriver(
            DriverConfig(
                node_id=o.id,
                consensus=o.consensus,
                tick_ms=o.tick_ms,
                election_ticks=o.election_ticks,
                heartbeat_ticks=o.heartbeat_ticks,
                snapshot_entries=o.snapshot_entries,
                snapshot_bytes=o.snapshot_log_mb << 20,
                unsafe_ack_before_commit=o.unsafe_ack_before_commit,
                inline_persist=o.inline_persist,
                groups=groups,
                sharded=shard_info.sharded,
            ),
            self.storage,
            self.metrics,
            endpoints=endpoints,
        )
        self.transport = PeerTransport(
            node_id=o.id,
            cluster_id=o.cluster_id,
            peers=endpoints,
            metrics=self.metrics,
            deliver=self.driver.deliver,
            heartbeat_s=max(o.tick_ms * o.heartbeat_ticks / 1000, 0.05),
            tls=peer_tls,
        )
        # Snapshot images travel apart from the consensus messages, built off the event
        # loop and streamed in chunks (node/snapshot_send.py, node/snapshot_recv.py).
        self.storage.stream_snapshots = True
        snapshot_dir = os.path.join(o.data_dir, "snapshots")
        self.snapshots = SnapshotSender(
            node_id=o.id,
            cluster_id=o.cluster_id,
            storage=self.storage,
            metrics=self.metrics,
            endpoints=self.driver.endpoints,
            send=self.transport.send,
            directory=snapshot_dir,
            report=self.driver.feedback.snapshot,
            tls=peer_tls,
        )
        receiver = SnapshotReceiver(
            node_id=o.id,
            cluster_id=o.cluster_id,
            known=self.transport.knows,
            deliver=self.driver.deliver,
            metrics=self.metrics,
            directory=snapshot_dir,
        )
        self.driver.send = self.snapshots.route
        self.transport.on_lost = self.driver.feedback.lost
        self.router = LocalRouter(self.storage, shard_info.sharded, lambda: self.driver.groups)
        self.meta: MetaClient | None = None
        self.reporter: Reporter | None = None
        self.placement: PlacementLoop | None = None
        self.reaper: ZombieReaper | None = None
        self.autosplit: AutoSplitter | None = None
        self.merger: MergeCoordinator | None = None
        if shard_info.sharded:
            self.meta = MetaClient(self.driver, endpoints, shard_info.meta_voters, peer_tls)
            self.reporter = Reporter(self.router, self.meta)
            self.placement = PlacementLoop(
                self.driver,
                self.transport,
                self.meta,
                replicas=o.replicas,
                down_after=o.down_after,
            )
            self.reaper = ZombieReaper(self.driver, self.meta)
            self.merger = MergeCoordinator(
                self.driver,
                self.router,
                self.meta,
                self.reporter,
                split_limits=(o.split_size, o.split_key_count),
            )
            merger = self.merger
            reporter = self.reporter
            meta = self.meta

            async def split_middle(shard: int, timeout: float) -> tuple[Descriptor, Descriptor]:
                return await split_shard(
                    self.driver, self.router, meta, reporter, shard, None, timeout
                )

            self.autosplit = AutoSplitter(
                self.driver,
                self.router,
                split_middle,
                max_bytes=o.split_size,
                max_keys=o.split_key_count,
                merging=merger.merging_with,
            )

            def shards_changed() -> None:
                self.router.refresh()
                reporter.poke()

            self.driver.on_shards_changed = shards_changed
        self.driver.on_fatal = lambda e: self.failed.set()
        self.driver.quiesce.peer_alive = self.transport.peer_alive
        self.driver.on_member_address = self.transport.add_peer
        limits = Limits()
        interceptors = None
        authority = None
        if tls is not None:
            from kvstore.security.auth import AccessInterceptor, Authority

            authority = Authority(tls.peer_cas)
            interceptors = [AccessInterceptor(authority)]
        server = self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                # One port serves clients and peers, so its limit is the peers' (a
                # client's 4 MiB is checked per request in kv.py); it was 256 MiB.
                ("grpc.max_receive_message_length", limits.server_max_message_bytes),
                ("grpc.max_send_message_length", limits.server_max_message_bytes),
                # Two nodes on one port would silently split the traffic: fail instead.
                ("grpc.so_reuseport", 0),
                # Accept the clients' and peers' keepalive pings (5-10 s).
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 4000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_ping_strikes", 0),
            ],
        )
        self.leases = LeaseExpiry(self.driver, self.storage)
        self.kv = KVService(
            driver=self.driver,
            storage=self.storage,
            limits=limits,
            metrics=self.metrics,
            node_id=o.id,
            router=self.router,
            leases=self.leases,
        )
        self.metrics.watch_budget(self.kv.budget)
        kv_pb2_grpc.add_KVServicer_to_server(self.kv, server)
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminService(
                driver=self.driver,
                transport=self.transport,
                node_id=o.id,
                endpoint=endpoints[o.id],
                cluster_id=o.cluster_id,
                consensus=o.consensus,
                router=self.router,
                meta=self.meta,
                reporter=self.reporter,
                placement=self.placement,
                merger=self.merger,
            ),
            server,
        )
        node_of = authority.node_of if authority is not None else None
        peer_pb2_grpc.add_PeerServicer_to_server(
            PeerService(self.transport, receiver, node_of), server
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            self.port = (
                server.add_secure_port(o.listen, tls.server_credentials())
                if tls is not None
                else server.add_insecure_port(o.listen)
            )
        except RuntimeError as e:
            raise StartupError(f"cannot listen on {o.listen}: {e}") from e
        if self.port == 0:
            raise StartupError(f"cannot listen on {o.listen}")
        if o.metrics_port:
            from prometheus_client import start_http_server

            # Where --listen binds: a node on 127.0.0.1 must not publish its metrics on
            # every interface.
            host = listen_host(o.listen)
            try:
                self._metrics_http = start_http_server(
                    o.metrics_port, addr=host, registry=self.metrics.registry
                )
            except OSError as e:
                raise StartupError(f"cannot serve metrics on {host}:{o.metrics_port}: {e}") from e
        await server.start()
        self.driver.start()
        self.leases.start()
        self.transport.start()
        await self._set_health()
        self._watcher = asyncio.create_task(self._watch(), name="watch")
        if self.reporter is not None:
            self.reporter.start()
        if self.placement is not None:
            self.placement.start()
        if self.reaper is not None:
            self.reaper.start()
        if self.autosplit is not None:
            self.autosplit.start()
        if self.merger is not None:
            self.merger.start()
        log.event(
            "node_started",
            id=o.id,
            listen=o.listen,
            consensus=o.consensus,
            cluster=o.cluster_id,
            metrics_port=o.metrics_port,
            tls=tls is not None,
        )

    async def _set_health(self) -> None:
        """SERVING, or NOT_SERVING while the storage is full or past its high-water mark:
        writes that add data fail then, and a probe or balancer should see the node as
        broken (deletes, eventual and causal reads still work, but what a client of the
        service expects does not)."""
        status = (
            health_pb2.HealthCheckResponse.NOT_SERVING
            if self.driver.storage_full or self.storage.tight
            else health_pb2.HealthCheckResponse.SERVING
        )
        if status != self._health_status:
            self._health_status = status
            await self.health.set("", status)
            await self.health.set(HEALTH_SERVICE, status)

    async def _watch(self) -> None:
        """Refresh what is derived from time rather than from events: the health status
        and the peers' phi gauges (a dead peer sends nothing that would update them)."""
        while True:
            await asyncio.sleep(WATCH_PERIOD_S)
            try:
                self.transport.peer_status()
                await self._set_health()
            except Exception as e:  # a status refresh must never take the node down
                log.event("watch_failed", level=40, error=repr(e))

    async def stop(self) -> None:
        """Stop every part, each within STOP_STEP_S: a shutdown that hangs on one part
        (a gRPC server waiting on a stuck stream) must still end. Storage is closed only
        after the driver, its only writer, has stopped: closing LMDB under a running
        writer crashes the process instead."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        with contextlib.suppress(Exception):
            await self.health.enter_graceful_shutdown()
        steps: list[tuple[str, Any]] = []
        if self.server is not None:
            steps.append(("server", self.server.stop(grace=0.5)))
        steps.append(("snapshots", self.snapshots.stop()))
        steps.append(("leases", self.leases.stop()))
        for name in ("reporter", "placement", "reaper", "autosplit", "merger"):
            part = getattr(self, name)
            if part is not None:
                steps.append((name, part.stop()))
        if self.meta is not None:
            steps.append(("meta", self.meta.close()))
        steps.append(("transport", self.transport.stop()))
        for name, step in steps:
            await _bounded(name, step)
        driver_stopped = await _bounded("driver", self.driver.stop())
        if self._metrics_http is not None:
            http, thread = self._metrics_http
            http.shutdown()
            http.server_close()
            thread.join(timeout=5)
        if driver_stopped:
            self.kv.close()
            self.storage.close()
        log.event("node_stopped", id=self.opts.id)


async def _bounded(name: str, step: Any) -> bool:
    """Await one stop step for at most STOP_STEP_S; False (and a log line naming the
    part) when it did not finish."""
    try:
        await asyncio.wait_for(step, STOP_STEP_S)
        return True
    except TimeoutError:
        log.event("stop_step_timeout", level=40, part=name, seconds=STOP_STEP_S)
        return False


async def run_until_signal(opts: ServeOptions) -> bool:
    """Run until SIGINT/SIGTERM (True) or until the node fails (False)."""
    node = Node(opts)
    await node.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopped = asyncio.create_task(stop.wait())
    failed = asyncio.create_task(node.failed.wait())
    try:
        await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        failed.cancel()
        await node.stop()
    return not node.failed.is_set()


def run(opts: ServeOptions) -> bool:
    """Blocking entry of `kvstore serve`; uvloop when present. False: the node failed.
    Owns the process's stderr: every line on it is a log line with the node id."""
    from kvstore.node import log, log_relay

    log.setup(
        opts.log_level, opts.id, opts.log_format, log_relay.capture_stderr(opts.id, opts.log_format)
    )
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_until_signal(opts))
    return uvloop.run(run_until_signal(opts))
