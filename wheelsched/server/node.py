"""A standalone node: the engine on real logs and a real clock, served over gRPC.

Start-up: lock and check the data directory, replay every shard's log (a
snapshot plus the records after it), make the new epochs durable, freeze the
replayed objects out of the garbage collector's way, then serve and start
the ticker. Health is SERVING only from then on.

Shutdown (SIGTERM/SIGINT): health NOT_SERVING, refuse new writes, stop
dispatching, give workers ``drain_seconds`` to ack what they hold, close the
streams, let in-flight RPCs finish, then flush and close every log. A lease
still open at exit is released when the node comes back (new epoch).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from wheelsched.cluster.etcd import Etcd, parse_endpoints
from wheelsched.cluster.member import ClusterMember
from wheelsched.config import ConfigError
from wheelsched.engine import Engine, EngineConfig, Limits, RecoveryStats, RemoteJob, Waits
from wheelsched.engine.model import ScheduleKind
from wheelsched.errors import InvalidArgument, Unavailable
from wheelsched.server import aio_poller
from wheelsched.server.auth import AuthInterceptor, load_tokens, peer_token
from wheelsched.server.metrics import LatenessHistogram, MetricsInterceptor, MetricsServer, RpcCounts
from wheelsched.server.ratelimit import RateLimiter, RateLimitInterceptor
from wheelsched.server.service import NodeService, SchedulerService, WorkerService
from wheelsched.server.ticker import Ticker, wall_us
from wheelsched.sharding import shard_of
from wheelsched.v1 import (
    node_pb2,
    node_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from wheelsched.wal import Committer, WALOptions, WriteAheadLog
from wheelsched.wheel import TimingWheel

log = logging.getLogger("wheelsched.node")

DATA_FORMAT = 1
META_FILE = "wheelsched.json"
# While a cluster node cannot prove its lease, the ticker checks this often
# whether it may fire again.
LEASE_RECHECK_US = 50_000
_CRON_KIND = int(ScheduleKind.CRON)
# Cluster mode: how often a node asks other nodes about the dependencies
# its waiting jobs have on their shards (a dependent runs at most this much
# later than it would on one node).
REMOTE_DEPENDENCY_POLL_SECONDS = 0.05
# A node that failed to load a shard (its log locked or damaged) gives the
# key back and does not claim that shard again for this long.
LOAD_RETRY_SECONDS = 2.0
# gRPC's default 4 MiB receive limit would cap a batch at ~60 jobs of 64 KiB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class NodeConfig:
    data_dir: Path
    listen: str = "127.0.0.1:7070"
    advertise: str = ""
    node_id: str = ""
    shard_count: int = 16
    fsync: str = "always"
    segment_bytes: int = 64 << 20
    snapshot_every_records: int = 1_000_000
    snapshot_every_bytes: int = 256 << 20
    tick_us: int = 100
    drain_seconds: float = 5.0
    limits: Limits = field(default_factory=Limits)
    # operations (issue #7): empty = off
    metrics: str = ""  # HOST:PORT for Prometheus /metrics
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""  # require client certificates signed by this CA (mTLS)
    tokens_file: str = ""  # bearer tokens and roles (wheelsched.server.auth)
    slow_fsync_ms: float = 100.0  # fsyncs slower than this are counted and logged
    event_log_seconds: float = 10.0  # interval of the aggregated event lines (slow fsync, ...)
    rate_limit_jobs_per_s: float = 0.0  # per client, write RPCs; 0 = off
    rate_limit_burst: int = 0  # bucket size; 0 = one second's worth
    # cluster mode (issue #6): empty etcd = standalone, this node owns every shard
    etcd: str = ""
    cluster: str = "default"
    lease_ttl: int = 5


def _check_data_dir(config: NodeConfig) -> None:
    """The shard count is fixed for a data directory: jobs are placed by
    hash modulo the count, so changing it would misroute every job."""
    root = Path(config.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    meta = root / META_FILE
    if meta.exists():
        stored = json.loads(meta.read_text())
        if stored.get("format") != DATA_FORMAT:
            raise InvalidArgument("data_dir", f"{root} has data format {stored.get('format')}; "
                                  f"this version reads {DATA_FORMAT}")
        if stored.get("shard_count") != config.shard_count:
            raise InvalidArgument("shards", f"{root} was created with {stored.get('shard_count')} "
                                  f"shards, not {config.shard_count}")
        return
    tmp = meta.with_suffix(f".{os.getpid()}.tmp")  # nodes of a cluster may share the root
    tmp.write_text(json.dumps({"format": DATA_FORMAT, "shard_count": config.shard_count}) + "\n")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, meta)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.node_id = config.node_id or socket.gethostname()
        self.advertise = config.advertise or config.listen
        self.serving = False
        # worker stream -> coroutine function that ends it once its pending
        # ack confirmations are sent
        self.streams: dict[asyncio.Queue, Callable[[], Awaitable[None]]] = {}
        self.start_us = wall_us()
        self.recovery = RecoveryStats()
        self.port = 0
        self._wal_options = WALOptions(
            segment_bytes=config.segment_bytes, fsync=config.fsync,
            snapshot_every_records=config.snapshot_every_records,
            snapshot_every_bytes=config.snapshot_every_bytes,
            slow_fsync_seconds=config.slow_fsync_ms / 1000.0)
        # One writer thread for every shard's log (see wheelsched/wal/committer.py).
        self._committer = Committer()
        self.engine = Engine(
            EngineConfig(shard_count=config.shard_count, tick_us=config.tick_us, limits=config.limits),
            clock=wall_us, open_log=self._open_log, wheel_factory=TimingWheel)
        self._server: grpc.aio.Server | None = None
        self._health = HealthServicer()
        self._ticker: Ticker | None = None
        self._stopped = asyncio.Event()
        self._logs_closed = False
        self.rpc_counts = RpcCounts()
        # fire lateness per dispatched batch; None when metrics are off
        self.lateness: LatenessHistogram | None = LatenessHistogram() if config.metrics else None
        self._metrics: MetricsServer | None = None
        self._events: asyncio.Task | None = None
        # what the event logger reported last, per shard: slow fsyncs, snapshots
        self._seen_slow: dict[int, int] = {}
        self._seen_snapshots: dict[int, int] = {}
        self.member: ClusterMember | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shard_tasks: set[asyncio.Task] = set()
        self._peers: dict[str, node_pb2_grpc.NodeStub] = {}  # address -> stub (cluster mode)
        self._peer_channels: list[grpc.aio.Channel] = []
        self._remote_deps: asyncio.Task | None = None
        # nodes of a cluster share the tokens file: present one of its tokens
        self._peer_metadata = ((("authorization", f"Bearer {peer_token(config.tokens_file)}"),)
                               if config.tokens_file else ())

    def _shard_dir(self, shard_id: int) -> Path:
        return Path(self.config.data_dir) / "shards" / f"{shard_id:04d}"

    def _open_log(self, shard_id: int) -> WriteAheadLog:
        return WriteAheadLog(self._shard_dir(shard_id), self._wal_options, meta={"shard": shard_id},
                             committer=self._committer)

    def _open_fenced_log(self, shard_id: int, epoch: int) -> WriteAheadLog:
        """Cluster mode: the log of a shard this node just claimed. The fence
        makes the previous owner's writer fail if it is still alive (paused
        past its lease, say), and a new segment keeps its late writes apart."""
        return WriteAheadLog(self._shard_dir(shard_id), self._wal_options,
                             meta={"shard": shard_id, "epoch": epoch},
                             fence=f"{epoch} {self.node_id}", committer=self._committer)

    # -- used by the servicers --------------------------------------------------

    def check_writable(self) -> None:
        """New work (schedule, cancel, subscribe) only while serving."""
        if not self.serving:
            raise Unavailable("node is not serving (starting or shutting down)")

    def check_ackable(self) -> None:
        """Acks and lease extensions also during the shutdown drain: a worker
        finishing what it holds saves a redelivery."""
        if self._logs_closed or self._ticker is None:
            raise Unavailable("node is not serving (starting or stopped)")

    def after_write(self) -> None:
        """A write may have armed an earlier timer than the ticker sleeps to."""
        self._ticker.set_target(self._next_tick_us())

    def _next_tick_us(self) -> int | None:
        if not self.engine.may_fire():
            # cluster mode without a provable lease: look again soon
            return wall_us() + LEASE_RECHECK_US
        return self.engine.next_wakeup_us()

    async def wait_durable(self, waits: Waits, urgent: bool = True) -> None:
        """Until the writes in ``waits`` are durable (``urgent=False``: within
        the logs' unhurried bound; see ``WriteAheadLog.wait_durable``)."""
        try:
            if len(waits) == 1:
                (wal, seq), = waits.items()
                await wal.wait_durable(seq, urgent)
            elif waits:  # every log is the committer's: one future for them all
                await self._committer.wait_all(waits, urgent)
        except Exception as exc:
            if isinstance(exc, Unavailable):
                raise
            raise Unavailable(f"write-ahead log failed: {exc}") from exc
        # Cluster mode: a write is acknowledged only if this node still
        # provably led its shard when the write became durable — then a new
        # leader, which can only come after the lease ended, replays it.
        if self.member is not None and not self.member.lease_valid():
            raise Unavailable("this node cannot prove its etcd lease alive; the write may or may "
                              "not have been applied: retry (scheduling by id is idempotent)")

    def _on_tick(self) -> None:
        engine = self.engine
        try:
            engine.tick()
        except Exception:  # a bug; keep firing the other jobs
            log.exception("tick failed")
        finally:
            self._ticker.set_target(self._next_tick_us())

    # -- aggregated events ---------------------------------------------------------

    def log_events(self) -> None:
        """One line per kind of event that happened since the last call
        (slow fsyncs, snapshots, dead jobs): called every ``event_log_seconds`` on
        the loop, never per record or per job."""
        threshold_ms = self.config.slow_fsync_ms
        slow_total, slow_max = 0, 0.0
        for shard in self.engine.shards:
            wal = shard.log
            st = wal.stats()
            seen = self._seen_slow.get(shard.id, 0)
            if st["slow_fsyncs"] > seen:
                slow_total += st["slow_fsyncs"] - seen
                self._seen_slow[shard.id] = st["slow_fsyncs"]
                recent = [sec for n, sec in list(wal.slow_fsyncs) if n > seen]
                if recent:
                    slow_max = max(slow_max, *recent)
            seen = self._seen_snapshots.get(shard.id, 0)
            if st["snapshots"] > seen:
                self._seen_snapshots[shard.id] = st["snapshots"]
                n = st["snapshots"] - seen
                more = f" ({n} snapshots since the last report)" if n > 1 else ""
                log.info("snapshot of shard %d: %d records in %.3f s%s", shard.id,
                         st["last_snapshot_records"], st["last_snapshot_seconds"], more,
                         extra={"event": "snapshot", "shard": shard.id,
                                "records": st["last_snapshot_records"],
                                "seconds": round(st["last_snapshot_seconds"], 6), "snapshots": n})
        dead, examples = self.engine.take_dead()
        if dead:
            log.warning("%d jobs dead in the last %g s, e.g. %s", dead, self.config.event_log_seconds,
                        ", ".join(examples),
                        extra={"event": "jobs_dead", "count": dead, "examples": examples,
                               "seconds": self.config.event_log_seconds})
        if slow_total:
            log.warning("fsync slower than %g ms: %d times, max %.1f ms", threshold_ms, slow_total,
                        slow_max * 1000,
                        extra={"event": "slow_fsync", "count": slow_total,
                               "max_seconds": round(slow_max, 6), "threshold_ms": threshold_ms})

    async def _event_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.event_log_seconds)
            try:
                self.log_events()
            except Exception:  # a bug; never stop the node for a log line
                log.exception("event logging failed")

    # -- life cycle ----------------------------------------------------------------

    def _read_pem(self, name: str, path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        out: list[grpc.aio.ServerInterceptor] = []
        if self.config.metrics:  # outermost: it also counts calls the auth check refuses
            out.append(MetricsInterceptor(self.rpc_counts))
        if self.config.tokens_file:
            out.append(AuthInterceptor(load_tokens(self.config.tokens_file)))
        if self.config.rate_limit_jobs_per_s > 0:  # innermost: refused-by-auth calls take no tokens
            limiter = RateLimiter(self.config.rate_limit_jobs_per_s, self.config.rate_limit_burst)
            out.append(RateLimitInterceptor(limiter, by_token=bool(self.config.tokens_file)))
        return out

    def _server_credentials(self) -> grpc.ServerCredentials | None:
        config = self.config
        if not config.tls_cert:
            return None
        cert = self._read_pem("tls_cert", config.tls_cert)
        key = self._read_pem("tls_key", config.tls_key)
        ca = self._read_pem("tls_client_ca", config.tls_client_ca) if config.tls_client_ca else None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                           require_client_auth=ca is not None)

    async def _recover_all(self) -> None:
        """Standalone: replay every shard and serve them all under new epochs."""
        config = self.config
        loop = asyncio.get_running_loop()
        stats, waits = await loop.run_in_executor(None, self.engine.recover)
        self.recovery = stats
        await self.wait_durable(waits)
        # Replayed jobs live as long as the node: keep the cyclic GC from
        # walking them on every full collection (DESIGN §5).
        gc.collect()
        gc.freeze()
        log.info("recovered %d jobs in %d shards from %d records + %d snapshot records in %.3f s; "
                 "released %d leases", stats.jobs, config.shard_count, stats.records,
                 stats.snapshot_records, stats.seconds, stats.released_leases,
                 extra={"event": "recovered", "jobs": stats.jobs, "shards": config.shard_count,
                        "records": stats.records, "snapshot_records": stats.snapshot_records,
                        "seconds": round(stats.seconds, 6), "released_leases": stats.released_leases})

    def _join_cluster(self) -> None:
        config = self.config
        etcd = Etcd(parse_endpoints(config.etcd), timeout=max(0.5, config.lease_ttl / 4))
        self.member = ClusterMember(etcd, self, cluster=config.cluster, node_id=self.node_id,
                                    address=self.advertise, shard_count=config.shard_count,
                                    ttl_seconds=config.lease_ttl)
        self.engine.may_fire = self.member.lease_valid
        self.engine.owner_of = self.member.owner_of
        self.member.start()
        self._remote_deps = asyncio.create_task(self._remote_dependency_loop())

    # -- cluster mode: dependencies on other nodes' jobs ------------------------------

    def _peer(self, address: str) -> node_pb2_grpc.NodeStub:
        stub = self._peers.get(address)
        if stub is None:
            credentials = None
            if self.config.tls_cert:  # peers present the same kind of certificate
                ca = self.config.tls_client_ca or self.config.tls_cert
                credentials = grpc.ssl_channel_credentials(self._read_pem("tls_client_ca", ca))
            options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
            channel = (grpc.aio.secure_channel(address, credentials, options) if credentials
                       else grpc.aio.insecure_channel(address, options))
            self._peer_channels.append(channel)
            stub = self._peers[address] = node_pb2_grpc.NodeStub(channel)
        return stub

    async def fetch_job_states(self, ids: list[str], strict: bool) -> dict[str, RemoteJob]:
        """Ask the owners of ``ids`` (jobs on shards this node does not own)
        for their state. ``strict``: an owner that cannot be asked is an
        error (``Unavailable``); else those ids are left out. Ids the owner
        does not know are left out (the caller takes them for unknown)."""
        by_owner: dict[str, list[str]] = {}
        for job_id in ids:
            address, _ = self.member.owner_of(shard_of(job_id, self.config.shard_count))
            if not address:
                if strict:
                    raise Unavailable(f"job {job_id!r}'s shard has no owner right now; retry")
                continue
            by_owner.setdefault(address, []).append(job_id)
        out: dict[str, RemoteJob] = {}

        async def ask(address: str, wanted: list[str]) -> None:
            try:
                response = await self._peer(address).GetJobStates(
                    node_pb2.GetJobStatesRequest(ids=wanted), timeout=2.0,
                    metadata=self._peer_metadata)
            except grpc.RpcError as exc:
                if strict:
                    raise Unavailable(f"cannot ask {address} about dependencies: {exc.code().name}") \
                        from None
                return
            for e in response.jobs:
                if not e.owned:
                    if strict:
                        raise Unavailable(f"job {e.id!r}'s shard is changing owner; retry")
                    continue
                if e.found:
                    out[e.id] = RemoteJob(e.id, e.state, _CRON_KIND if e.recurring else 0,
                                          e.executions, e.last_error)

        await asyncio.gather(*(ask(a, w) for a, w in by_owner.items()))
        return out

    async def _remote_dependency_loop(self) -> None:
        engine = self.engine
        while True:
            await asyncio.sleep(REMOTE_DEPENDENCY_POLL_SECONDS)
            ids = engine.remote_dependencies()
            if not ids or not engine.may_fire():
                continue
            try:
                states = await self.fetch_job_states(ids, strict=False)
                waits = engine.settle_remote(states.values())
                self.after_write()
                await self.wait_durable(waits)
            except Unavailable:
                continue  # asked again at the next round
            except Exception:  # a bug; keep the loop
                log.exception("settling remote dependencies failed")

    # -- cluster mode: shards come and go (the member calls these on its thread) ----

    def acquired(self, shard: int, epoch: int) -> None:
        self._loop.call_soon_threadsafe(self._spawn, self._take(shard, epoch))

    def lost(self, shards: list[int], reason: str) -> None:
        self._loop.call_soon_threadsafe(self._drop, shards, reason)

    def release_requested(self, shard: int) -> None:
        self._loop.call_soon_threadsafe(self._spawn, self._hand_over(shard))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._shard_tasks.add(task)
        task.add_done_callback(self._shard_tasks.discard)

    async def _take(self, shard_id: int, epoch: int) -> None:
        """Serve a shard this node claimed: replay its log (off the loop),
        record the new epoch, and fire once that record is durable."""
        loop = asyncio.get_running_loop()
        member = self.member

        def load() -> tuple[Any, RecoveryStats]:
            return self.engine.load_shard(shard_id, self._open_fenced_log(shard_id, epoch))

        try:
            shard, stats = await loop.run_in_executor(None, load)
        except Exception as exc:
            log.error("cannot load shard %d: %s; giving it back", shard_id, exc,
                      extra={"event": "shard_load_failed", "shard": shard_id, "error": str(exc)})
            member.released(shard_id, retry_after=LOAD_RETRY_SECONDS)
            return
        if not member.holds(shard_id, epoch) or not self.serving:
            await loop.run_in_executor(None, _close_quietly, shard.log)
            return
        released, waits = self.engine.attach_shard(shard, epoch)
        try:
            await self.wait_durable(waits)
        except Unavailable:
            return  # leadership lost meanwhile: ``lost`` detaches it
        self.engine.start_firing(shard_id)
        self.after_write()
        rec = self.recovery
        rec.records += stats.records
        rec.snapshot_records += stats.snapshot_records
        rec.jobs += stats.jobs
        rec.released_leases += released
        rec.seconds += stats.seconds
        log.info("serving shard %d at epoch %d: %d jobs from %d records + %d snapshot records in "
                 "%.3f s; released %d leases", shard_id, epoch, stats.jobs, stats.records,
                 stats.snapshot_records, stats.seconds, released,
                 extra={"event": "shard_serving", "shard": shard_id, "epoch": epoch,
                        "jobs": stats.jobs, "records": stats.records,
                        "seconds": round(stats.seconds, 6), "released_leases": released})

    def _drop(self, shards: list[int], reason: str) -> None:
        """Leadership lost: forget the shards at once (nothing more is fired,
        dispatched or written for them here)."""
        dropped = []
        for shard_id in shards:
            shard = self.engine.detach_shard(shard_id)
            if shard is not None:
                dropped.append(shard_id)
                self._spawn(self._loop.run_in_executor(None, _close_quietly, shard.log))
        log.warning("lost shards %s: %s", dropped, reason,
                    extra={"event": "shards_lost", "shards": dropped, "reason": reason})

    async def _hand_over(self, shard_id: int) -> None:
        """Give a shard to another node with nothing fired twice: stop firing
        it, let workers ack what they hold (up to ``drain_seconds``), close its
        log, then delete the leader key."""
        engine = self.engine
        loop = asyncio.get_running_loop()
        shard = engine.drain_shard(shard_id)
        if shard is not None:
            deadline = loop.time() + self.config.drain_seconds
            while shard.in_flight and self.streams and loop.time() < deadline:
                await asyncio.sleep(0.02)
            if engine.detach_shard(shard_id) is not shard:
                return  # lost meanwhile
            await loop.run_in_executor(None, _close_quietly, shard.log)
        self.member.released(shard_id)
        log.info("handed over shard %d", shard_id, extra={"event": "shard_handed_over", "shard": shard_id})

    async def start(self) -> None:
        config = self.config
        # Configuration errors first, before minutes of replay.
        interceptors = self._interceptors()
        credentials = self._server_credentials()
        _check_data_dir(config)
        log.info("starting node %s: %d shards, data dir %s, fsync %s", self.node_id, config.shard_count,
                 config.data_dir, config.fsync,
                 extra={"event": "starting", "node_id": self.node_id, "shards": config.shard_count,
                        "data_dir": str(config.data_dir), "fsync": config.fsync,
                        "tls": bool(credentials), "mtls": bool(config.tls_client_ca),
                        "auth": bool(config.tokens_file)})
        loop = asyncio.get_running_loop()
        self._loop = loop
        if not config.etcd:
            await self._recover_all()
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.so_reuseport", 0)]
        server = grpc.aio.server(options=options, interceptors=interceptors)
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(SchedulerService(self), server)
        worker_pb2_grpc.add_WorkerServicer_to_server(WorkerService(self), server)
        node_pb2_grpc.add_NodeServicer_to_server(NodeService(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name,
                 worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name,
                 node_pb2.DESCRIPTOR.services_by_name["Node"].full_name,
                 health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        if credentials is None:
            self.port = server.add_insecure_port(config.listen)
        else:
            self.port = server.add_secure_port(config.listen, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {config.listen}")
        await server.start()
        self._server = server
        if not aio_poller.install(loop):
            log.warning("grpc.aio completion wake-ups not found: under load, replies may stall "
                        "(see wheelsched/server/aio_poller.py)")
        if not config.advertise:  # the real port when listening on port 0
            self.advertise = f"{config.listen.rsplit(':', 1)[0]}:{self.port}"

        self._ticker = Ticker(loop, self._on_tick)
        self._ticker.start()
        self.serving = True
        if config.etcd:
            self._join_cluster()
        self._events = asyncio.create_task(self._event_loop())
        self._ticker.set_target(self._next_tick_us())
        for name in [*names[:3], ""]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        host = config.listen.rsplit(":", 1)[0]
        if config.metrics:
            self._metrics = MetricsServer(self, self.rpc_counts, self.lateness)
            mport = self._metrics.start(config.metrics)
            mhost = config.metrics.rsplit(":", 1)[0]
            log.info("metrics on %s:%d/metrics", mhost, mport,
                     extra={"event": "metrics", "address": f"{mhost}:{mport}"})
        log.info("serving on %s:%d", host, self.port,
                 extra={"event": "serving", "address": f"{host}:{self.port}", "tls": bool(credentials)})
        print(f"listening on {host}:{self.port}", file=sys.stderr, flush=True)

    async def stop(self) -> None:
        if not self.serving:
            return
        self.serving = False
        await self._health.enter_graceful_shutdown()
        engine = self.engine
        engine.dispatch_paused = True
        if self.member is not None:
            self.member.balancing = False  # claim nothing more
            for shard in list(engine.shards):
                engine.drain_shard(shard.id)
        # Let workers ack what they hold.
        deadline = asyncio.get_running_loop().time() + self.config.drain_seconds
        while (sum(s.in_flight for s in engine.shards) and self.streams
               and asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.02)
        await asyncio.gather(*(close() for close in list(self.streams.values())))
        if self._server is not None:
            await self._server.stop(grace=self.config.drain_seconds)
        if self._ticker is not None:
            self._ticker.stop()
        if self._events is not None:
            self._events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events
            self.log_events()  # what happened since the last report
        # Every op applied is in the log queue; close() writes and fsyncs it.
        self._logs_closed = True
        await asyncio.get_running_loop().run_in_executor(None, engine.close)
        await asyncio.get_running_loop().run_in_executor(None, self._committer.close, 5.0)
        if self._remote_deps is not None:
            self._remote_deps.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._remote_deps
        for channel in self._peer_channels:
            await channel.close()
        if self.member is not None:
            # Only now, with every log closed: revoking the lease deletes the
            # leader keys, and other nodes take the shards over.
            await asyncio.get_running_loop().run_in_executor(None, self.member.leave)
        if self._metrics is not None:
            self._metrics.stop()
        counters = dict(engine.counters)
        log.info("stopped", extra={"event": "stopped", **{f"jobs_{k}": v for k, v in counters.items()}})
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def _close_quietly(wal: WriteAheadLog) -> None:
    """Close a log this node no longer leads; a fenced or failed log may
    refuse to flush, which is fine: its shard is someone else's now."""
    try:
        wal.close()
    except Exception as exc:
        log.info("closing the log of a lost shard: %s", exc)


async def serve(config: NodeConfig) -> int:
    node = Node(config)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    await node.start()
    await stop_requested.wait()
    log.info("shutdown requested", extra={"event": "shutdown_requested"})
    await node.stop()
    return 0


def run(config: NodeConfig) -> int:
    # The ticker and WAL threads need the GIL promptly when they wake; the
    # default 5 ms switch interval would add up to 5 ms of fire lateness
    # whenever the loop thread is busy.
    sys.setswitchinterval(0.0005)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(config))
    return 0
