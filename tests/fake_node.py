"""A scripted in-process stand-in for a node, for client unit tests.

It is not the server: it answers the Scheduler and Node RPCs from a dict and
lets a test push dispatches onto a Worker stream and watch the acks and
lease extensions arrive, so the client's plumbing (pagination, batching,
error mapping, ack batching, lease extension, reconnect, drain) is tested
without waiting for, or depending on, the real engine.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from wheelsched.v1 import (
    job_pb2,
    node_pb2,
    node_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)


def ts(unix: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromMicroseconds(round(unix * 1_000_000))
    return t


class FakeScheduler(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self) -> None:
        self.jobs: dict[str, job_pb2.Job] = {}
        self.batch_sizes: list[int] = []
        self.list_requests: list[scheduler_pb2.ListJobsRequest] = []
        self.schedule_requests: list[scheduler_pb2.ScheduleJobRequest] = []
        self._n = 0

    def _store(self, job: job_pb2.Job, context: grpc.ServicerContext) -> job_pb2.Job:
        if not job.queue:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "queue: required")
        if job.queue == "bad queue":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "queue: must match [A-Za-z0-9._:-]+")
        if not job.id:
            self._n += 1
            job.id = f"gen-{self._n}"
        old = self.jobs.get(job.id)
        if old is not None:
            if old.queue != job.queue or old.payload != job.payload:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"job {job.id!r} exists with another spec")
            return old
        out = job_pb2.Job()
        out.CopyFrom(job)
        out.state = job_pb2.SCHEDULED
        out.create_time.CopyFrom(ts(1_700_000_000))
        out.next_fire_time.CopyFrom(ts(1_700_000_060.5))
        out.shard = 3
        out.epoch = 7
        self.jobs[job.id] = out
        return out

    @staticmethod
    def _view(job: job_pb2.Job, view: int) -> job_pb2.Job:
        out = job_pb2.Job()
        out.CopyFrom(job)
        if view != job_pb2.FULL:
            out.ClearField("payload")
        return out

    def ScheduleJob(self, request, context):
        self.schedule_requests.append(request)
        return self._view(self._store(request.job, context), request.view)

    def BatchScheduleJobs(self, request, context):
        self.batch_sizes.append(len(request.jobs))
        if any(j.queue == "bad queue" for j in request.jobs):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "jobs[0].queue: bad")
        return scheduler_pb2.BatchScheduleJobsResponse(
            jobs=[self._view(self._store(j, context), request.view) for j in request.jobs]
        )

    def _get(self, job_id: str, context: grpc.ServicerContext) -> job_pb2.Job:
        job = self.jobs.get(job_id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {job_id!r} not found")
        return job

    def GetJob(self, request, context):
        return self._view(self._get(request.id, context), request.view)

    def ListJobs(self, request, context):
        self.list_requests.append(request)
        size = request.page_size or 100
        if size > 1000:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size: at most 1000")
        matching = [
            j
            for _, j in sorted(self.jobs.items())
            if (not request.queue or j.queue == request.queue)
            and (not request.states or j.state in request.states)
        ]
        start = int(request.page_token or 0)
        page = matching[start : start + size]
        token = str(start + size) if start + size < len(matching) else ""
        return scheduler_pb2.ListJobsResponse(
            jobs=[self._view(j, request.view) for j in page], next_page_token=token
        )

    def CancelJob(self, request, context):
        job = self._get(request.id, context)
        if job.state in (job_pb2.SUCCEEDED, job_pb2.DEAD):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"job {request.id!r} is final")
        job.state = job_pb2.CANCELLED
        job.finish_time.CopyFrom(ts(1_700_000_100))
        return self._view(job, request.view)

    def RequeueJob(self, request, context):
        job = self._get(request.id, context)
        if job.state != job_pb2.DEAD:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "only DEAD jobs can be requeued")
        job.state = job_pb2.SCHEDULED
        job.attempt = 0
        return self._view(job, request.view)


class FakeNode(node_pb2_grpc.NodeServicer):
    def GetShardMap(self, request, context):
        return node_pb2.ShardMap(
            shard_count=2,
            shards=[
                node_pb2.ShardAssignment(shard=0, owner_node_id="n1", owner_address="a:1", epoch=1),
                node_pb2.ShardAssignment(shard=1, owner_node_id="n1", owner_address="a:1", epoch=2),
            ],
        )

    def GetNodeStatus(self, request, context):
        return node_pb2.NodeStatus(
            node_id="n1",
            version="0.1.0",
            start_time=ts(1_700_000_000),
            serving=True,
            shards=[node_pb2.ShardStatus(shard=0, epoch=1, jobs=5)],
        )


class FakeWorkerService(worker_pb2_grpc.WorkerServicer):
    """Each stream: record the subscription, send whatever the test pushes
    with ``dispatch()``, answer every ack and extension with a result (code
    from ``ack_code``), and end when the client half-closes."""

    def __init__(self) -> None:
        self.subscriptions: list[worker_pb2.StreamJobsRequest] = []
        self.requests: list[worker_pb2.StreamJobsRequest] = []  # every non-first request
        self.acks: list[worker_pb2.AckItem] = []
        self.extensions: list[worker_pb2.LeaseExtension] = []
        self.unary_acks: list[worker_pb2.AckItem] = []
        self.ack_code: Callable[[worker_pb2.AckItem], int] = lambda a: 0
        self.confirm_acks = True
        self.half_closed = threading.Event()
        self.streams: list[queue.Queue[Any]] = []
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def dispatch(self, *dispatches: worker_pb2.Dispatch, stream: int = -1) -> None:
        self.streams[stream].put(worker_pb2.StreamJobsResponse(dispatches=dispatches))

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True

    def StreamJobs(self, request_iterator, context) -> Iterator[worker_pb2.StreamJobsResponse]:
        out: queue.Queue[Any] = queue.Queue()
        first = next(request_iterator)
        if "bad queue" in first.queues:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "queues: 'bad queue' is not a queue name")
        with self.changed:
            self.subscriptions.append(first)
            self.streams.append(out)
            self.changed.notify_all()

        def read() -> None:
            try:
                for req in request_iterator:
                    results = [
                        worker_pb2.AckResult(job_id=a.job_id, attempt=a.attempt, code=self.ack_code(a))
                        for a in req.acks
                    ]
                    ext_results = [
                        worker_pb2.AckResult(
                            job_id=e.job_id, attempt=e.attempt, lease_deadline=ts(time.time() + 60)
                        )
                        for e in req.extensions
                    ]
                    with self.changed:
                        self.requests.append(req)
                        self.acks.extend(req.acks)
                        self.extensions.extend(req.extensions)
                        self.changed.notify_all()
                    if (results and self.confirm_acks) or ext_results:
                        out.put(
                            worker_pb2.StreamJobsResponse(
                                ack_results=results if self.confirm_acks else [],
                                extension_results=ext_results,
                            )
                        )
                with self.changed:
                    self.half_closed.set()
                    self.changed.notify_all()
                out.put(None)
            except grpc.RpcError:
                out.put(None)

        threading.Thread(target=read, daemon=True).start()
        while context.is_active():
            try:
                item = out.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                return
            yield item

    def Ack(self, request, context):
        with self.changed:
            self.unary_acks.extend(request.acks)
            self.changed.notify_all()
        return worker_pb2.AckResponse(
            results=[worker_pb2.AckResult(job_id=a.job_id, attempt=a.attempt) for a in request.acks]
        )


def make_dispatch(
    job_id: str, *, attempt: int = 1, epoch: int = 1, lease: float = 30.0, payload: bytes = b""
) -> worker_pb2.Dispatch:
    now = time.time()
    return worker_pb2.Dispatch(
        job_id=job_id,
        queue="q",
        payload=payload,
        attempt=attempt,
        epoch=epoch,
        shard=0,
        due_time=ts(now - 0.001),
        lease_deadline=ts(now + lease),
        priority=0,
    )


class FakeNodeServer:
    """A grpc server on a free loopback port with the fake services; can be
    stopped and started again on the same port (a node restart)."""

    def __init__(self) -> None:
        self.scheduler = FakeScheduler()
        self.node = FakeNode()
        self.worker = FakeWorkerService()
        self.port = 0
        self._server: grpc.Server | None = None

    def start(self) -> FakeNodeServer:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(self.scheduler, server)
        node_pb2_grpc.add_NodeServicer_to_server(self.node, server)
        worker_pb2_grpc.add_WorkerServicer_to_server(self.worker, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
