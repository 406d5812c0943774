"""gRPC servicers: thin translations between the API and the engine.

Each RPC validates and converts its request, calls the engine on the loop
thread, waits for the write-ahead log to make the change durable, and only
then answers. Errors are ``WheelschedError``s, turned into status codes by
``wheelsched.status`` in the ``rpc`` decorator and nowhere else.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING

import grpc

from wheelsched import __version__
from wheelsched.engine import AckItem, Extension
from wheelsched.engine.model import ScheduleKind
from wheelsched.errors import InvalidArgument, ResourceExhausted, WheelschedError
from wheelsched.gcutil import untracked
from wheelsched.server import convert
from wheelsched.server.ticker import wall_us
from wheelsched.status import code_number, redirect_metadata, status_code
from wheelsched.v1 import (
    job_pb2,
    node_pb2,
    node_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)

if TYPE_CHECKING:
    from wheelsched.server.node import Node

log = logging.getLogger("wheelsched.server")
_CRON_KIND = int(ScheduleKind.CRON)
DEFAULT_MAX_IN_FLIGHT = 64
# A busy worker stream carries at most one message per _STREAM_MIN_GAP_S.
# Every message costs the worker a fixed amount however many jobs it holds:
# the sync Python client hands each one from its polling thread to the
# reading thread, and with handler threads running a Worker read a backlog
# at 0.2-0.6 ms per message. At 10,000 jobs/s in messages of 2-7 jobs it fell
# behind and jobs waited 20-40 ms in that backlog (bench.fire_latency grpc
# mode, received_at - dispatch time, in bursts). Sending what
# accumulates for up to 1 ms as one message caps the rate at 1,000/s; a
# message that comes when the stream has been quiet for 1 ms goes at once.
_STREAM_MIN_GAP_S = 0.001
_HELD = object()  # in a stream's queue: dispatches wait in its list


def rpc(method):
    """Map WheelschedError to its status code (the one place servicers do it)."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except WheelschedError as exc:
            metadata = redirect_metadata(exc)
            if metadata:
                context.set_trailing_metadata(metadata)
            await context.abort(status_code(exc), str(exc))

    return wrapper


class SchedulerService(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, node: Node) -> None:
        self.node = node
        self.engine = node.engine

    async def _remote_dependencies(self, reqs) -> dict | None:
        """Cluster mode: the state of dependencies on other nodes' shards,
        from their owners, for the engine to check and resolve them."""
        ids = self.engine.remote_dependencies_of(reqs)
        return await self.node.fetch_job_states(ids, strict=True) if ids else None

    def _job(self, job, shard, view) -> job_pb2.Job:
        return convert.job_to_proto(job, shard.id, shard.epoch, view, deps=self._deps(job, shard, view))

    def _deps(self, job, shard, view):
        """The job's dependencies for views that show them (None: none)."""
        if view == job_pb2.JobView.MINIMAL:
            return None
        return self.engine.dependency_info(job, shard, dependents=view == job_pb2.JobView.FULL)

    @rpc
    async def ScheduleJob(self, request, context):
        self.node.check_writable()
        req = convert.job_request(request.job)
        remote = await self._remote_dependencies([req]) if self.node.member else None
        jobs, waits = self.engine.schedule([req], remote)
        self.node.after_write()
        await self.node.wait_durable(waits)
        job = jobs[0]
        return self._job(job, self.engine.shard_for(job.id), request.view)

    @rpc
    async def BatchScheduleJobs(self, request, context):
        self.node.check_writable()
        limit = self.engine.config.limits.max_batch_jobs
        if len(request.jobs) > limit:
            raise ResourceExhausted(f"jobs: {len(request.jobs)} jobs exceeds the batch limit of {limit}")
        reqs = [convert.job_request(pb, f"jobs[{i}]") for i, pb in enumerate(request.jobs)]
        remote = await self._remote_dependencies(reqs) if self.node.member else None
        jobs, waits = self.engine.schedule(reqs, remote)
        self.node.after_write()
        await self.node.wait_durable(waits)
        resp = scheduler_pb2.BatchScheduleJobsResponse()
        view = request.view
        shard_for = self.engine.shard_for
        add = resp.jobs.add
        for job in jobs:
            shard = shard_for(job.id)
            convert.job_to_proto(job, shard.id, shard.epoch, view, add(), self._deps(job, shard, view))
        return resp

    @rpc
    async def GetJob(self, request, context):
        job, shard = self.engine.get(request.id)
        return self._job(job, shard, request.view)

    @rpc
    async def ListJobs(self, request, context):
        page, token = self.engine.list(queue=request.queue, states=list(request.states),
                                       page_size=request.page_size, page_token=request.page_token)
        resp = scheduler_pb2.ListJobsResponse(next_page_token=token)
        view = request.view
        for job, shard in page:
            convert.job_to_proto(job, shard.id, shard.epoch, view, resp.jobs.add(),
                                 self._deps(job, shard, view))
        return resp

    @rpc
    async def CancelJob(self, request, context):
        self.node.check_writable()
        job, waits = self.engine.cancel(request.id)
        self.node.after_write()
        await self.node.wait_durable(waits)
        return self._job(job, self.engine.shard_for(job.id), request.view)

    @rpc
    async def RequeueJob(self, request, context):
        self.node.check_writable()
        job, waits = self.engine.requeue(request.id)
        self.node.after_write()
        await self.node.wait_durable(waits)
        return self._job(job, self.engine.shard_for(job.id), request.view)


def _results(results) -> list[worker_pb2.AckResult]:
    out = []
    for r in results:
        res = worker_pb2.AckResult(job_id=r.job_id, attempt=r.attempt)
        if r.error is not None:
            res.code = code_number(r.error)
            res.message = str(r.error)
        elif r.lease_deadline_us:
            convert.set_ts(res.lease_deadline, r.lease_deadline_us)
        out.append(res)
    return out


def _ack_items(acks) -> list[AckItem]:
    # untracked, not AckItem(...): one per acked job, and NamedTuple's own
    # __new__ is a Python function (~7x the cost); an AckItem holds atoms
    return [untracked(AckItem, (a.job_id, a.attempt, a.epoch, a.success, a.error, a.retryable))
            for a in acks]


def _extensions(exts) -> list[Extension]:
    return [Extension(e.job_id, e.attempt, e.epoch, e.extend_by_ms * 1000) for e in exts]


class WorkerService(worker_pb2_grpc.WorkerServicer):
    def __init__(self, node: Node) -> None:
        self.node = node
        self.engine = node.engine

    @rpc
    async def Ack(self, request, context):
        self.node.check_ackable()
        results, waits = self.engine.ack(_ack_items(request.acks))
        self.node.after_write()
        await self.node.wait_durable(waits)
        return worker_pb2.AckResponse(results=_results(results))

    @rpc
    async def ExtendLeases(self, request, context):
        self.node.check_ackable()
        results, waits = self.engine.extend(_extensions(request.extensions))
        self.node.after_write()
        await self.node.wait_durable(waits)
        return worker_pb2.ExtendLeasesResponse(results=_results(results))

    async def StreamJobs(self, request_iterator, context):
        node = self.node
        engine = self.engine
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        try:
            node.check_writable()
            queues = list(first.queues)
            max_in_flight = first.max_in_flight or DEFAULT_MAX_IN_FLIGHT
            if first.max_in_flight < 0:
                raise InvalidArgument("max_in_flight", "must not be negative")
        except WheelschedError as exc:
            await context.abort(status_code(exc), str(exc))
        out: asyncio.Queue = asyncio.Queue()
        put = out.put_nowait
        dispatches = convert.dispatches
        # Dispatches wait here as the engine's records until the writer
        # sends, and become one message then: at 10,000 jobs/s a node ticks
        # once per job, and ten one-job messages merged cost a third more
        # than one message of ten. _HELD in ``out`` says there are some.
        held: list = []

        lateness = node.lateness

        def deliver(deliveries) -> None:
            if not held:
                put(_HELD)
            held.extend(deliveries)
            if lateness is not None:  # metrics on: one pass over the batch, no lock
                lateness.observe_batch(wall_us(), deliveries)

        try:
            sub = engine.subscribe(queues, max_in_flight, deliver, first.worker_id or context.peer())
        except WheelschedError as exc:
            await context.abort(status_code(exc), str(exc))
        pending: set[asyncio.Task] = set()

        async def close() -> None:
            """End the stream after the acks already applied are confirmed."""
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            put(None)

        node.streams[out] = close

        async def confirm(waits, field: str, results) -> None:
            try:
                # A worker needs its acks confirmed soon, not at once: they
                # ride on the logs' next fsync (see UNAWAITED_SYNC_SECONDS),
                # so each ack message does not fsync every shard it touched.
                await node.wait_durable(waits, urgent=field != "ack_results")
            except WheelschedError as exc:
                for r in results:
                    r.code = code_number(exc)
                    r.message = str(exc)
            msg = worker_pb2.StreamJobsResponse()
            getattr(msg, field).extend(results)
            put(msg)

        def settle(results, waits, field: str) -> None:
            node.after_write()
            task = asyncio.create_task(confirm(waits, field, _results(results)))
            pending.add(task)
            task.add_done_callback(pending.discard)

        def handle(req) -> None:
            node.check_ackable()
            if req.acks:
                settle(*engine.ack(_ack_items(req.acks)), "ack_results")
            if req.extensions:
                settle(*engine.extend(_extensions(req.extensions)), "extension_results")

        async def read(first) -> None:
            try:
                handle(first)
                async for req in request_iterator:
                    handle(req)
            except (asyncio.CancelledError, grpc.RpcError, WheelschedError):
                pass  # the worker went away, or the node stopped: the stream ends
            except Exception:  # a bug: say so, and end the stream (the worker reconnects)
                log.exception("worker stream %s failed", sub.name)
            finally:
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
                put(None)

        reader = asyncio.create_task(read(first))  # passed: a task runs later than it is made
        get_nowait = out.get_nowait
        clock = asyncio.get_running_loop().time
        sleep = asyncio.sleep
        last_write = 0.0
        try:
            closing = False
            while not closing:
                head = await out.get()
                if head is None:
                    break
                linger = last_write + _STREAM_MIN_GAP_S - clock()
                if linger > 0:
                    await sleep(linger)
                last_write = clock()
                # A stream carries a few thousand messages/s at most: send
                # everything queued while the last write was in flight as one.
                parts = [head]
                while not out.empty():
                    more = get_nowait()
                    if more is None:
                        closing = True
                        break
                    parts.append(more)
                # no await from here to the write: a delivery now would
                # find ``held`` empty and queue a fresh _HELD
                if held:
                    msg = dispatches(held)
                    held.clear()
                else:
                    msg = worker_pb2.StreamJobsResponse()
                for part in parts:
                    if part is not _HELD:
                        msg.MergeFrom(part)
                await context.write(msg)
        finally:
            engine.unsubscribe(sub)
            node.streams.pop(out, None)
            reader.cancel()


class NodeService(node_pb2_grpc.NodeServicer):
    def __init__(self, node: Node) -> None:
        self.node = node
        self.engine = node.engine

    @rpc
    async def GetShardMap(self, request, context):
        node = self.node
        resp = node_pb2.ShardMap(shard_count=self.engine.config.shard_count)
        member = node.member
        if member is None:
            for shard in self.engine.shards:
                resp.shards.add(shard=shard.id, owner_node_id=node.node_id,
                                owner_address=node.advertise, epoch=shard.epoch)
            resp.nodes.add(node_id=node.node_id, address=node.advertise)
            return resp
        view = member.view
        resp.cluster = member.cluster
        for shard_id, owner in sorted(view.owners.items()):
            resp.shards.add(shard=shard_id, owner_node_id=owner.node_id,
                            owner_address=owner.address, epoch=owner.epoch)
        for node_id, address in sorted(view.nodes.items()):
            resp.nodes.add(node_id=node_id, address=address)
        return resp

    @rpc
    async def GetJobStates(self, request, context):
        if len(request.ids) > self.engine.config.limits.max_batch_jobs:
            raise ResourceExhausted("ids: too many in one request")
        resp = node_pb2.GetJobStatesResponse()
        for job_id, job, owned in self.engine.job_states(request.ids):
            entry = resp.jobs.add(id=job_id, owned=owned, found=job is not None)
            if job is not None:
                entry.state = job.state
                entry.recurring = job.kind == _CRON_KIND
                entry.executions = job.executions
                entry.last_error = job.last_error
        return resp

    @rpc
    async def GetNodeStatus(self, request, context):
        node = self.node
        member = node.member
        resp = node_pb2.NodeStatus(node_id=node.node_id, version=__version__, serving=node.serving,
                                   workers=len(node.streams),
                                   replayed_records=node.recovery.records + node.recovery.snapshot_records,
                                   replay_seconds=node.recovery.seconds, address=node.advertise,
                                   cluster=member.cluster if member else "",
                                   lease_valid=self.engine.may_fire())
        convert.set_ts(resp.start_time, node.start_us)
        now = wall_us()
        for shard in self.engine.shards:
            ready, lag_us = self.engine.backlog(shard, now)
            resp.shards.add(shard=shard.id, epoch=shard.epoch, jobs=len(shard.jobs),
                            pending=shard.active, in_flight=shard.in_flight,
                            wal_last_seq=shard.log.last_seq, wal_durable_seq=shard.log.durable_seq,
                            firing=shard.firing, ready=ready, lag_ms=lag_us // 1000)
        return resp

