"""The synchronous scheduling client."""

from __future__ import annotations

import builtins
import threading
import time
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
from wheelsched.sharding import shard_of
from wheelsched.status import from_rpc_error
from wheelsched.v1 import node_pb2, node_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc


def _with_id(job: Any) -> Any:
    """Give a job without an id a generated one (see ``Client.schedule``)."""
    if not job.id:
        job.id = uuid.uuid4().hex
    return job


MAX_PAGE_SIZE = 1000  # ListJobs' limit (scheduler.proto)
MAX_BATCH_HINT = 1000
# Retrying a redirect or an unreachable cluster node: first pause, cap.
RETRY_INITIAL = 0.05
RETRY_MAX = 1.0


class _Connection:
    __slots__ = ("channel", "node", "scheduler")

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.scheduler = scheduler_pb2_grpc.SchedulerStub(channel)
        self.node = node_pb2_grpc.NodeStub(channel)


class Client:
    """A synchronous client of a wheelsched node or cluster.

    ``target`` is ``HOST:PORT``, or several separated by commas (seeds of a
    cluster: any live one will do). Against a standalone node every call
    goes to it. Against a cluster the client learns the shard map the first
    time a node redirects it (``NotOwner``), then sends each request straight
    to the owner of the job's shard; it follows redirects, refreshes the map
    and retries, with backoff, while a shard changes owner or a node is
    down, until the call's deadline. Retrying is safe: scheduling is
    idempotent by id (the client gives every job an id before sending it)
    and cancelling twice is a no-op.

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
        self._credentials = credentials
        self._channel_options = tuple(channel_options)
        self._seeds = [t.strip() for t in target.split(",") if t.strip()]
        if not self._seeds:
            raise errors.InvalidArgument("target", "give HOST:PORT")
        self._lock = threading.Lock()
        self._connections: dict[str, _Connection] = {}
        self._map: ShardMap | None = None  # set once a node redirected us (cluster mode)

    # ------------------------------------------------------------ plumbing

    def _connection(self, address: str) -> _Connection:
        conn = self._connections.get(address)
        if conn is None:
            with self._lock:
                conn = self._connections.get(address)
                if conn is None:
                    channel = open_channel(address, self._credentials, self._channel_options)
                    conn = self._connections[address] = _Connection(channel)
        return conn

    def _call_at(self, address: str, service: str, method: str, request: Any,
                 timeout: float | None = None) -> Any:
        stub = getattr(self._connection(address), service)
        try:
            return getattr(stub, method)(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def _call(self, service: str, method: str, request: Any, timeout: float | None = None) -> Any:
        """A call that any node answers (the first seed, or a live node of the cluster)."""
        return self._routed(None, service, method, request, timeout)

    @property
    def clustered(self) -> bool:
        """True once the client has learnt it talks to a cluster."""
        return self._map is not None and bool(self._map.cluster)

    def _address_for(self, shard: int | None) -> str:
        cmap = self._map
        if cmap is None or not cmap.cluster:
            return self._seeds[0]
        if shard is not None:
            owner = cmap.owner(shard % cmap.shard_count)
            if owner is not None and owner.owner_address:
                return owner.owner_address
        if cmap.nodes:
            return cmap.nodes[0].address
        return self._seeds[0]

    def _shard(self, job_id: str) -> int | None:
        return shard_of(job_id, self._map.shard_count) if self._map is not None else None

    def refresh_shard_map(self, avoid: str = "") -> ShardMap | None:
        """Read the shard map from the first node that answers (``avoid`` last)."""
        known = [n.address for n in self._map.nodes] if self._map is not None else []
        candidates = list(dict.fromkeys([*self._seeds, *known]))
        candidates.sort(key=lambda a: a == avoid)
        for address in candidates:
            try:
                msg = self._call_at(address, "node", "GetShardMap", node_pb2.GetShardMapRequest(),
                                    timeout=min(self.timeout, 2.0))
            except errors.WheelschedError:
                continue
            self._map = shard_map_from_proto(msg)
            return self._map
        return None

    def _routed(self, shard: int | None, service: str, method: str, request: Any,
                timeout: float | None = None, job_id: str = "") -> Any:
        """Call the owner of ``shard`` (or of ``job_id``'s shard; None: any
        node), following redirects and riding out owner changes in a cluster."""
        total = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + total
        if job_id:
            shard = self._shard(job_id)
        address = self._address_for(shard)
        pause = RETRY_INITIAL
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self._call_at(address, service, method, request, max(remaining, 0.001))
            except errors.NotOwner as exc:
                if self._map is None or not self._map.cluster or exc.owner == address:
                    self.refresh_shard_map()
                if job_id:
                    shard = self._shard(job_id)
                if exc.owner and exc.owner != address:
                    address = exc.owner  # follow the redirect at once
                    if time.monotonic() < deadline:
                        continue
                error: errors.WheelschedError = exc
            except errors.Unavailable as exc:
                if not self.clustered:
                    raise
                error = exc  # node down, or between owners: ask the cluster again
                self.refresh_shard_map(avoid=address)
                if job_id:
                    shard = self._shard(job_id)
            if time.monotonic() + pause > deadline:
                raise error
            time.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)
            address = self._address_for(shard)

    def close(self) -> None:
        with self._lock:
            for conn in self._connections.values():
                conn.channel.close()
            self._connections.clear()

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
        after: Sequence[str] | None = None,
        on_dependency_failure: str | None = None,
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

        ``after``: ids of jobs (existing ones) this job runs after; it is
        WAITING until they have succeeded. ``on_dependency_failure``:
        "cancel" (default: a DEAD or CANCELLED dependency cancels this job)
        or "run_anyway". To submit a whole graph at once, use
        ``schedule_many`` (dependencies may name jobs of the same batch).
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
            after=after,
            on_dependency_failure=on_dependency_failure,
        )
        proto = _with_id(spec.to_proto())
        request = scheduler_pb2.ScheduleJobRequest(job=proto, view=view_value(view))
        return job_from_proto(self._routed(None, "scheduler", "ScheduleJob", request, job_id=proto.id))

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

        A graph (specs with ``after`` naming each other) is accepted or
        rejected as a whole when it fits in one chunk; across chunks, put
        every job after the jobs it depends on (a dependency must exist,
        in the same chunk or an earlier one).
        """
        if not isinstance(chunk, int) or chunk < 1:
            raise errors.InvalidArgument("chunk", "must be a positive int")
        protos = [_with_id(as_spec(j).to_proto()) for j in jobs]
        view_v = view_value(view)
        out: builtins.list[Job | None] = [None] * len(protos)
        done: builtins.list[Job] = []
        # In a cluster, one chunk per owner: a node accepts only jobs of its
        # own shards (all or nothing), so parts owned by different nodes are
        # independent, like chunks.
        pending = builtins.list(range(len(protos)))
        deadline = time.monotonic() + self.timeout  # for riding out owner changes
        pause = RETRY_INITIAL
        while pending:
            groups: dict[str, builtins.list[int]] = {}
            if self.clustered:
                for i in pending:
                    groups.setdefault(self._address_for(self._shard(protos[i].id)), []).append(i)
            else:
                groups[self._seeds[0]] = pending
            pending = []
            for address, indexes in groups.items():
                for start in range(0, len(indexes), chunk):
                    part = indexes[start : start + chunk]
                    request = scheduler_pb2.BatchScheduleJobsRequest(
                        jobs=[protos[i] for i in part], view=view_v)
                    try:
                        response = self._call_at(address, "scheduler", "BatchScheduleJobs", request)
                    except errors.Unavailable as err:
                        # a redirect, or (in a cluster) a node down or between
                        # owners: regroup this part by a fresh map and retry
                        redirect = isinstance(err, errors.NotOwner)
                        if redirect or self.clustered:
                            self.refresh_shard_map(avoid="" if redirect else address)
                        if not self.clustered or time.monotonic() + pause > deadline:
                            err.scheduled = done  # type: ignore[attr-defined]
                            raise
                        pending.extend(part)
                        continue
                    except errors.WheelschedError as err:
                        err.scheduled = done  # type: ignore[attr-defined]
                        raise
                    for i, m in zip(part, response.jobs, strict=True):
                        out[i] = job_from_proto(m)
                        done.append(out[i])
                    deadline = time.monotonic() + self.timeout  # progress: a fresh allowance
            if pending:
                time.sleep(pause)
                pause = min(pause * 2, RETRY_MAX)
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------ reading and changing

    def get(self, job_id: str, full: bool = False) -> Job:
        """One job; ``full=True`` includes the payload and ``dependents``
        (the jobs still waiting for it). ``open_dependencies`` is always
        there: the ids in ``after`` not resolved yet."""
        request = scheduler_pb2.GetJobRequest(id=job_id, view=view_value("full" if full else "basic"))
        return job_from_proto(self._routed(None, "scheduler", "GetJob", request, job_id=job_id))

    def cancel(self, job_id: str) -> Job:
        """Cancel from any non-final state (cancelling twice is a no-op);
        a SUCCEEDED or DEAD job raises ``FailedPrecondition``."""
        request = scheduler_pb2.CancelJobRequest(id=job_id)
        return job_from_proto(self._routed(None, "scheduler", "CancelJob", request, job_id=job_id))

    def requeue(self, job_id: str) -> Job:
        """A DEAD job back to SCHEDULED, due now, attempts reset."""
        request = scheduler_pb2.RequeueJobRequest(id=job_id)
        return job_from_proto(self._routed(None, "scheduler", "RequeueJob", request, job_id=job_id))

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
        if self._map is None:
            self.refresh_shard_map()  # once: is this a cluster?
        if not self.clustered:
            response = self._call("scheduler", "ListJobs", request)
            return [job_from_proto(m) for m in response.jobs], response.next_page_token
        return self._cluster_page(request)

    def _cluster_page(self, request: Any) -> tuple[builtins.list[Job], str]:
        """A page in a cluster: tokens are ``shard:last-id`` on every node,
        so the client walks the shards in order, asking each shard's owner
        and keeping only that shard's jobs (an owner also returns its later
        shards, which other pages cover)."""
        cmap = self._map
        assert cmap is not None
        token = request.page_token
        head = token.partition(":")[0]
        shard = int(head) if head.isdigit() else 0
        if token and not head.isdigit():
            raise errors.InvalidArgument("page_token", "is not a token this cluster issued")
        while shard < cmap.shard_count:
            request.page_token = token if token else f"{shard}:"
            response = self._routed(shard, "scheduler", "ListJobs", request)
            jobs = [job_from_proto(m) for m in response.jobs if m.shard == shard]
            following = f"{shard + 1}:" if shard + 1 < cmap.shard_count else ""
            if jobs and len(jobs) == len(response.jobs) and response.next_page_token:
                return jobs, response.next_page_token
            if jobs:
                return jobs, following
            shard += 1
            token = ""
        return [], ""

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
        return shard_map_from_proto(self._call("node", "GetShardMap", node_pb2.GetShardMapRequest()))

    def status(self) -> NodeStatus:
        return node_status_from_proto(self._call("node", "GetNodeStatus", node_pb2.GetNodeStatusRequest()))

    def status_of(self, address: str) -> NodeStatus:
        """The status of one particular node (e.g. each node of a cluster)."""
        return node_status_from_proto(
            self._call_at(address, "node", "GetNodeStatus", node_pb2.GetNodeStatusRequest()))
