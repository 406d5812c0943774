"""Prometheus metrics (``wheelsched serve --metrics HOST:PORT`` → ``/metrics``).

Nothing here runs per job on the hot path with a lock. The job counters are
the engine's own ``Engine.counters`` (plain int increments it does anyway),
per-shard gauges are read off the shards and their logs, and gRPC request
counts are a dict bumped once per RPC; all of it is read when Prometheus
scrapes, by ``NodeCollector`` on the HTTP server's thread. Reading ints and
lengths the loop thread is changing is safe under the GIL (each read is
atomic; a scrape is a consistent-enough sample, like any scrape).

Fire lateness is ``LatenessHistogram``: the worker-stream ``deliver``
callback hands it each dispatched batch, and it bins every job's lateness
(dispatch time - due time) into per-queue bucket counts with one ``bisect``
and one list increment per job — no lock, no prometheus object — then the
collector exports them as a Prometheus histogram.
"""

from __future__ import annotations

import asyncio
import bisect
import inspect
import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.process_collector import ProcessCollector

from wheelsched.engine.engine import QUEUE_COUNTERS

if TYPE_CHECKING:
    from wheelsched.server.node import Node

log = logging.getLogger("wheelsched.metrics")

# Lateness bucket bounds in seconds: 100 µs ... 60 s.
LATENESS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Queue names are chosen by clients: past this many, lateness is counted
# under queue="_other" so a hostile client cannot grow the series forever.
MAX_QUEUE_SERIES = 200
OTHER_QUEUE = "_other"

# Engine.counters key -> metric name (wheelsched_jobs_<name>_total) and help.
JOB_COUNTERS = {
    "scheduled": "jobs accepted by Schedule/BatchSchedule (new jobs, not idempotent repeats)",
    "fired": "jobs that came due and were queued for a worker (first attempts and retries)",
    "dispatched": "deliveries leased to workers",
    "succeeded": "executions acked as successful",
    "failed": "attempts that failed (a failure ack or an expired lease)",
    "retried": "failed attempts scheduled again with backoff",
    "dead": "jobs (or cron executions) that used up their attempts",
    "cancelled": "jobs cancelled",
    "misfired": "cron occurrences that could not fire in time (per the misfire policy)",
    "lease_expired": "leases that ran out without an ack",
    "requeued": "dead jobs revived by RequeueJob",
    "purged": "finished jobs dropped after their retention",
}


class LatenessHistogram:
    """Per-queue fire-lateness bucket counts, updated on the loop thread."""

    def __init__(self, bounds: tuple[float, ...] = LATENESS_BUCKETS) -> None:
        self.bounds_us = [round(b * 1e6) for b in bounds]
        self.bounds = bounds
        # queue -> [bucket counts..., +Inf count, sum_us]
        self.queues: dict[str, list[int]] = {}

    def _row(self, queue: str) -> list[int]:
        row = self.queues.get(queue)
        if row is None:
            if len(self.queues) >= MAX_QUEUE_SERIES:
                queue = OTHER_QUEUE
                row = self.queues.get(queue)
            if row is None:
                row = self.queues[queue] = [0] * (len(self.bounds_us) + 2)
        return row

    def observe_batch(self, now_us: int, deliveries: Iterable[Any]) -> None:
        """One batch of ``engine.Delivery``: lateness = now - due (at least 0)."""
        bounds = self.bounds_us
        find = bisect.bisect_left
        last_queue = None
        row: list[int] = []
        total = len(bounds) + 1
        for d in deliveries:
            queue = d.job.queue
            if queue != last_queue:
                row = self._row(queue)
                last_queue = queue
            late = now_us - d.due_us
            if late < 0:
                late = 0
            row[find(bounds, late)] += 1
            row[total] += late

    def families(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(
            "wheelsched_fire_lateness_seconds",
            "time from a job's due time to its dispatch to a worker stream", labels=["queue"])
        for queue, row in list(self.queues.items()):
            row = list(row)  # a consistent copy (the loop thread keeps counting)
            cumulative, buckets = 0, []
            for bound, n in zip(self.bounds, row, strict=False):
                cumulative += n
                buckets.append((repr(bound), cumulative))
            cumulative += row[len(self.bounds)]
            buckets.append(("+Inf", cumulative))
            fam.add_metric([queue], buckets, row[-1] / 1e6)
        return fam


class RpcCounts:
    """gRPC requests by method and status code (bumped once per call)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, method: str, code: str) -> None:
        key = (method, code)
        self.counts[key] = self.counts.get(key, 0) + 1


def _code_name(context: Any, exc: BaseException | None) -> str:
    code = None
    try:
        code = context.code()
    except Exception:
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    if exc is None:
        return "OK"
    if isinstance(exc, GeneratorExit | asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"


def wrap_behavior(handler: grpc.RpcMethodHandler, wrap) -> grpc.RpcMethodHandler:
    """The same handler with its behavior replaced by ``wrap(behavior, is_gen)``."""
    for kind, make in (("unary_unary", grpc.unary_unary_rpc_method_handler),
                       ("unary_stream", grpc.unary_stream_rpc_method_handler),
                       ("stream_unary", grpc.stream_unary_rpc_method_handler),
                       ("stream_stream", grpc.stream_stream_rpc_method_handler)):
        behavior = getattr(handler, kind)
        if behavior is not None:
            return make(wrap(behavior, inspect.isasyncgenfunction(behavior)),
                        request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
    return handler


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC by method and final status code."""

    def __init__(self, counts: RpcCounts) -> None:
        self.counts = counts

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            self.counts.add(method, "UNIMPLEMENTED")
            return None
        add = self.counts.add

        def wrap(behavior, is_gen):
            if is_gen:
                async def gen(request, context):
                    exc = None
                    try:
                        async for item in behavior(request, context):
                            yield item
                    except BaseException as e:
                        exc = e
                        raise
                    finally:
                        add(method, _code_name(context, exc))
                return gen

            async def call(request, context):
                exc = None
                try:
                    return await behavior(request, context)
                except BaseException as e:
                    exc = e
                    raise
                finally:
                    add(method, _code_name(context, exc))
            return call

        return wrap_behavior(handler, wrap)


class NodeCollector:
    """Reads the node's state at scrape time."""

    def __init__(self, node: Node, rpc_counts: RpcCounts, lateness: LatenessHistogram) -> None:
        self.node = node
        self.rpc_counts = rpc_counts
        self.lateness = lateness

    def describe(self):
        return []  # collect() at registration would read a node still starting

    def collect(self):
        node = self.node
        engine = node.engine
        counters = dict(engine.counters)
        for name, text in JOB_COUNTERS.items():
            c = CounterMetricFamily(f"wheelsched_jobs_{name}", text + " (node-wide)")
            c.add_metric([], counters.get(name, 0))
            yield c

        rows = [(queue, list(row)) for queue, row in list(engine.queue_counters.items())]
        for i, name in enumerate(QUEUE_COUNTERS):
            c = CounterMetricFamily(f"wheelsched_queue_jobs_{name}", JOB_COUNTERS[name] + " (per queue)",
                                    labels=["queue"])
            for queue, row in rows:
                c.add_metric([queue], row[i])
            yield c

        shards = list(engine.shards)
        gauges = {
            "wheelsched_shard_pending_jobs": ("unfinished jobs (scheduled, due or leased)", "active"),
            "wheelsched_shard_in_flight_leases": ("jobs leased to workers (DISPATCHED)", "in_flight"),
            "wheelsched_shard_jobs": ("jobs in the job table, finished ones included", None),
            "wheelsched_shard_ready_jobs": ("jobs due and waiting for a worker", None),
            "wheelsched_shard_epoch": ("the shard's fencing epoch", "epoch"),
            "wheelsched_wal_last_seq": ("sequence number of the last record appended", None),
            "wheelsched_wal_durable_seq": ("sequence number of the last durable record", None),
            "wheelsched_shard_owned": ("1 if this node owns the shard (standalone: every shard)", None),
        }
        fams = {name: GaugeMetricFamily(name, text, labels=["shard"]) for name, (text, _) in gauges.items()}
        for shard in shards:
            label = [str(shard.id)]
            fams["wheelsched_shard_pending_jobs"].add_metric(label, shard.active)
            fams["wheelsched_shard_in_flight_leases"].add_metric(label, shard.in_flight)
            fams["wheelsched_shard_jobs"].add_metric(label, len(shard.jobs))
            fams["wheelsched_shard_ready_jobs"].add_metric(label, len(shard.ready))
            fams["wheelsched_shard_epoch"].add_metric(label, shard.epoch)
            fams["wheelsched_wal_last_seq"].add_metric(label, shard.log.last_seq)
            fams["wheelsched_wal_durable_seq"].add_metric(label, shard.log.durable_seq)
            fams["wheelsched_shard_owned"].add_metric(label, 1)
        yield from fams.values()

        yield from wal_families(shards)

        rec = node.recovery
        g = GaugeMetricFamily("wheelsched_replay_records", "log records replayed at start (incl. snapshot)")
        g.add_metric([], rec.records + rec.snapshot_records)
        yield g
        g = GaugeMetricFamily("wheelsched_replay_seconds", "time the start-up replay took")
        g.add_metric([], rec.seconds)
        yield g
        g = GaugeMetricFamily("wheelsched_replay_jobs", "jobs recovered at start")
        g.add_metric([], rec.jobs)
        yield g
        g = GaugeMetricFamily("wheelsched_serving", "1 while the node serves (after recovery, before drain)")
        g.add_metric([], 1 if node.serving else 0)
        yield g
        g = GaugeMetricFamily("wheelsched_worker_streams", "connected worker streams")
        g.add_metric([], len(node.streams))
        yield g
        g = GaugeMetricFamily("wheelsched_start_time_seconds", "unix time the node started")
        g.add_metric([], node.start_us / 1e6)
        yield g

        c = CounterMetricFamily("wheelsched_grpc_requests", "gRPC calls by method and status code",
                                labels=["method", "code"])
        for (method, code), n in list(self.rpc_counts.counts.items()):
            c.add_metric([method, code], n)
        yield c
        yield self.lateness.families()


def _buckets(bounds: Iterable[float], counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (last = +Inf) -> cumulative prometheus buckets."""
    out, cumulative = [], 0
    for bound, n in zip(bounds, counts, strict=False):
        cumulative += n
        out.append((repr(float(bound)), cumulative))
    out.append(("+Inf", cumulative + counts[-1]))
    return out


def wal_families(shards: list) -> Iterable[Any]:
    """Per-shard ``WriteAheadLog.stats()`` as metrics."""
    from wheelsched.wal.log import BATCH_BUCKETS, FSYNC_BUCKETS

    stats = [(str(shard.id), shard.log.stats()) for shard in shards if hasattr(shard.log, "stats")]
    fsync = HistogramMetricFamily("wheelsched_wal_fsync_seconds",
                                  "duration of the writer's group-commit fsyncs", labels=["shard"])
    batch = HistogramMetricFamily("wheelsched_wal_batch_records",
                                  "records per group-commit batch (one write, at most one fsync)",
                                  labels=["shard"])
    counters = {
        "wheelsched_wal_records_written": ("records written to the log", "records_written"),
        "wheelsched_wal_bytes_written": ("bytes of framed records written to the log", "bytes_written"),
        "wheelsched_wal_slow_fsyncs": ("fsyncs slower than the slow-fsync threshold", "slow_fsyncs"),
        "wheelsched_wal_snapshots": ("snapshots completed", "snapshots"),
        "wheelsched_wal_snapshot_seconds": ("time spent writing snapshots", "snapshot_seconds"),
        "wheelsched_wal_snapshot_records": ("items written to snapshots", "snapshot_records"),
    }
    gauges = {
        "wheelsched_wal_fsync_max_seconds": ("the slowest fsync since start", "fsync_max_seconds"),
        "wheelsched_wal_batch_max_records": ("the largest group-commit batch since start", "batch_max"),
        "wheelsched_wal_last_snapshot_seconds": ("duration of the last snapshot", "last_snapshot_seconds"),
        "wheelsched_wal_last_snapshot_records": ("items in the last snapshot", "last_snapshot_records"),
    }
    cfams = {name: CounterMetricFamily(name, text, labels=["shard"]) for name, (text, _) in counters.items()}
    gfams = {name: GaugeMetricFamily(name, text, labels=["shard"]) for name, (text, _) in gauges.items()}
    for label, st in stats:
        fsync.add_metric([label], _buckets(FSYNC_BUCKETS, st["fsync_buckets"]), st["fsync_seconds"])
        batch.add_metric([label], _buckets(BATCH_BUCKETS, st["batch_buckets"]), st["records_written"])
        for name, (_, key) in counters.items():
            cfams[name].add_metric([label], st[key])
        for name, (_, key) in gauges.items():
            gfams[name].add_metric([label], st[key])
    yield fsync
    yield batch
    yield from cfams.values()
    yield from gfams.values()


class MetricsServer:
    """The /metrics HTTP endpoint (prometheus_client's, on its own thread)."""

    def __init__(self, node: Node, rpc_counts: RpcCounts, lateness: LatenessHistogram) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(node, rpc_counts, lateness))
        self.registry.register(ProcessCollector(registry=None))
        self._server = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self, address: str) -> int:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        self._server, self._thread = start_http_server(int(port), host, registry=self.registry)
        self.port = self._server.server_port
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
