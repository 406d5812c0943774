"""The synchronous scheduling client."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc

from wheelsched import errors
from wheelsched.client._channel import open_channel, security
from wheelsched.client._convert import (
    DurationLike,
    Job,
    JobSpec,
    NodeStatus,
    ShardMap,
    TimeLike,
    as_spec,
    job_from_proto,
    node_status_from_proto,
    shard_map_from_proto,
    state_value,
    view_value,
)
from wheelsched.status import from_rpc_error
from wheelsched.v1 import node_pb2, node_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc


def _with_id(job: Any) -> Any:
    """Give a job without an id a generated one (see ``Client.schedule``)."""
    if not job.id:
        job.id = uuid.uuid4().hex
    return job


MAX_PAGE_SIZE = 1000  # ListJobs' limit (scheduler.proto)
MAX_BATCH_HINT = 1000


class Client:
    """A synchronous client of one wheelsched node.

    Every call has a deadline (``timeout`` seconds) and every failed call
    raises the ``wheelsched.errors`` class of its status code (``NotFound``,
    ``InvalidArgument``, ``AlreadyExists``, ...) chained to the original
    ``grpc.RpcError``, so callers catch the same exceptions the engine raises
    in-process. Thread-safe: share one Client between threads.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel_options: Sequence[tuple[str, Any]] = (),
        tls_ca: str | bytes | None = None,
        tls_cert: str | bytes | None = None,
        tls_key: str | bytes | None = None,
        token: str | None = None,
    ) -> None:
        credentials, metadata = security(credentials, metadata, tls_ca=tls_ca, tls_cert=tls_cert,
                                         tls_key=tls_key, token=token)
        self.target = target
        self.timeout = timeout
        self._metadata = tuple(metadata)
        self._channel = open_channel(target, credentials, channel_options)
        self._scheduler = scheduler_pb2_grpc.SchedulerStub(self._channel)
        self._node = node_pb2_grpc.NodeStub(self._channel)

    # ------------------------------------------------------------ plumbing

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ scheduling

    def schedule(
        self,
        queue: str,
        payload: bytes | str = b"",
        *,
        id: str | None = None,
        due: TimeLike | None = None,
        delay: DurationLike | None = None,
        cron: str | None = None,
        tz: str | None = None,
        misfire: str | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        min_backoff: DurationLike | None = None,
        max_backoff: DurationLike | None = None,
        max_doublings: int | None = None,
        jitter: float | None = None,
        lease_timeout: DurationLike | None = None,
        view: str = "basic",
    ) -> Job:
        """Schedule one job; returns it as stored (durable when this returns).

        Exactly one of ``due`` (datetime, naive = UTC, or unix seconds),
        ``delay`` (seconds or timedelta) or ``cron`` (with ``tz``, an IANA
        name, and ``misfire``: "fire_once" | "fire_all" | "skip"). A bad
        spec raises ``InvalidArgument`` (a ``ValueError``) before any RPC.
        Idempotent by ``id``: the same id and spec returns the existing job,
        the same id with another spec raises ``AlreadyExists``. Without an
        id the client generates one (a uuid4 hex, as the server would), so a
        call retried after a lost reply cannot schedule the job twice.
        """
        spec = JobSpec(
            queue=queue,
            payload=payload,  # type: ignore[arg-type]  # str is encoded by JobSpec
            id=id,
            due=due,
            delay=delay,
            cron=cron,
            tz=tz,
            misfire=misfire,
            priority=priority,
            max_attempts=max_attempts,
            min_backoff=min_backoff,
            max_backoff=max_backoff,
            max_doublings=max_doublings,
            jitter=jitter,
            lease_timeout=lease_timeout,
        )
        request = scheduler_pb2.ScheduleJobRequest(job=_with_id(spec.to_proto()), view=view_value(view))
        return job_from_proto(self._call(self._scheduler.ScheduleJob, request))

    def schedule_many(
        self,
        jobs: Iterable[JobSpec | Mapping[str, Any]],
        chunk: int = MAX_BATCH_HINT,
        *,
        view: str = "minimal",
    ) -> builtins.list[Job]:
        """Schedule many jobs with one ``BatchScheduleJobs`` RPC per ``chunk``
        jobs; returns them in input order.

        By default the returned jobs carry only id, state, next_fire_time,
        shard and epoch (``view="minimal"``): echoing every spec back costs
        more than scheduling it. ``view="basic"`` or ``"full"`` returns more.

        Each chunk is accepted or rejected as a whole by the server, but
        chunks are independent: if chunk k fails, chunks before it are
        scheduled. The raised error then carries them as ``err.scheduled``
        (a list of Job), so a caller can resume (ids make retries safe).
        Every spec is validated before the first RPC.
        """
        if not isinstance(chunk, int) or chunk < 1:
            raise errors.InvalidArgument("chunk", "must be a positive int")
        protos = [_with_id(as_spec(j).to_proto()) for j in jobs]
        view_v = view_value(view)
        out: builtins.list[Job] = []
        for start in range(0, len(protos), chunk):
            request = scheduler_pb2.BatchScheduleJobsRequest(
                jobs=protos[start : start + chunk], view=view_v
            )
            try:
                response = self._call(self._scheduler.BatchScheduleJobs, request)
            except errors.WheelschedError as err:
                err.scheduled = out  # type: ignore[attr-defined]
                raise
            out.extend(job_from_proto(m) for m in response.jobs)
        return out

    # ------------------------------------------------------------ reading and changing

    def get(self, job_id: str, full: bool = False) -> Job:
        """One job; ``full=True`` includes the payload."""
        request = scheduler_pb2.GetJobRequest(id=job_id, view=view_value("full" if full else "basic"))
        return job_from_proto(self._call(self._scheduler.GetJob, request))

    def cancel(self, job_id: str) -> Job:
        """Cancel from any non-final state (cancelling twice is a no-op);
        a SUCCEEDED or DEAD job raises ``FailedPrecondition``."""
        request = scheduler_pb2.CancelJobRequest(id=job_id)
        return job_from_proto(self._call(self._scheduler.CancelJob, request))

    def requeue(self, job_id: str) -> Job:
        """A DEAD job back to SCHEDULED, due now, attempts reset."""
        request = scheduler_pb2.RequeueJobRequest(id=job_id)
        return job_from_proto(self._call(self._scheduler.RequeueJob, request))

    def list_page(
        self,
        queue: str | None = None,
        states: Iterable[str | int] | str | None = None,
        page_size: int = 100,
        page_token: str = "",
        *,
        full: bool = False,
    ) -> tuple[builtins.list[Job], str]:
        """One page of ``ListJobs``: (jobs, next_page_token); "" means last page."""
        if not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise errors.InvalidArgument("page_size", f"must be in 1..{MAX_PAGE_SIZE}")
        if isinstance(states, str | int):
            states = [states]
        request = scheduler_pb2.ListJobsRequest(
            queue=queue or "",
            states=[state_value(s) for s in states or ()],
            page_size=page_size,
            page_token=page_token,
            view=view_value("full" if full else "basic"),
        )
        response = self._call(self._scheduler.ListJobs, request)
        return [job_from_proto(m) for m in response.jobs], response.next_page_token

    def list(
        self,
        queue: str | None = None,
        states: Iterable[str | int] | str | None = None,
        page_size: int = 100,
        *,
        full: bool = False,
    ) -> Iterator[Job]:
        """Every matching job, fetched lazily ``page_size`` at a time.

        ``states`` are names ("SCHEDULED", case-insensitive) or numbers.
        Arguments are checked when this is called, not at the first ``next``.
        """
        if isinstance(states, str | int):
            states = [states]
        states = builtins.list(states or ())
        first = self.list_page(queue, states, page_size, "", full=full)  # validates now
        return self._pages(first, queue, states, page_size, full)

    def _pages(
        self,
        first: tuple[builtins.list[Job], str],
        queue: str | None,
        states: builtins.list[str | int],
        page_size: int,
        full: bool,
    ) -> Iterator[Job]:
        jobs, token = first
        yield from jobs
        while token:
            jobs, token = self.list_page(queue, states, page_size, token, full=full)
            yield from jobs

    # ------------------------------------------------------------ node

    def shard_map(self) -> ShardMap:
        return shard_map_from_proto(self._call(self._node.GetShardMap, node_pb2.GetShardMapRequest()))

    def status(self) -> NodeStatus:
        return node_status_from_proto(
            self._call(self._node.GetNodeStatus, node_pb2.GetNodeStatusRequest())
        )
