"""The Worker: stream dispatches, run a handler per job, ack in batches.

Threads, and why each exists:

* the thread that calls ``run()`` only waits for ``stop()`` and then drains
  (it cannot read the stream itself, or a signal handler calling ``stop()``
  on the main thread could never see the drain finish);
* the *connection* thread opens ``Worker.StreamJobs``, reads dispatches and
  ack results, and reconnects with capped, jittered exponential backoff when
  the stream breaks (node restart, UNAVAILABLE);
* grpc's own thread pulls requests from a generator fed by one buffer: acks
  and lease extensions from every handler are taken all at once and sent as
  one ``StreamJobsRequest`` whenever there is something, never one RPC per job
  (while acks keep coming it waits up to 1 ms for more: see ``_ACK_BATCH``);
* the *lease keeper* extends, by the lease length, the lease of any job whose
  handler has run for half of it (a heap keyed by the next extension time);
* ``concurrency`` handler threads.

Acks are at least once too: an ack sent but not confirmed by an
``ack_results`` entry when the stream breaks is sent again on the next stream
(or, while stopping, with the unary ``Ack`` RPC). The server refuses acks for
a lease it no longer holds; those count in ``ack_errors``.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc

from wheelsched import errors
from wheelsched.client._channel import open_channel, security
from wheelsched.client._convert import Delivery, delivery_from_proto
from wheelsched.status import from_rpc_error
from wheelsched.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger("wheelsched.client.worker")

# Stream errors that reconnecting cannot fix: run() raises them.
_FATAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
MAX_ERROR_TEXT = 2000  # handler error text sent in an ack (repr can be huge)
_MIN_LEASE_S = 0.1
# Ack batching. Every request costs the node a fixed amount of event-loop
# time (an engine call, a log append, a confirmation message) whatever its
# size, so while acks keep coming the request generator waits up to
# _ACK_LINGER_S for _ACK_BATCH of them before sending. It lingers only when
# the stream is busy (the previous request went out less than
# _ACK_BUSY_S ago): an ack that comes alone goes out at once.
_ACK_BATCH = 256
_ACK_LINGER_S = 0.001
_ACK_BUSY_S = 0.005


class PermanentFailure(Exception):
    """Raise from a handler to fail the job without retries (straight to DEAD)."""


Handler = Callable[[Delivery], Any]


class _Running:
    """A received job until its ack is buffered (slots: there may be many)."""

    __slots__ = ("delivery", "key", "lease_ms", "lease_s", "seq")

    def __init__(self, delivery: Delivery, key: tuple[str, int, int], lease_s: float) -> None:
        self.delivery = delivery
        self.key = key
        self.lease_s = lease_s
        self.lease_ms = max(1, round(lease_s * 1000))
        self.seq = 0  # which heap entry is current (older ones are stale)


class Worker:
    """Receives due jobs of ``queues`` and runs ``handler(delivery)`` for each.

    The handler returning acks success; raising acks failure (retryable,
    with ``repr(exc)`` as the error) unless it raises ``PermanentFailure``.
    At most ``max_in_flight`` (default ``2 * concurrency``) jobs are held at
    once. ``run()`` blocks until ``stop()``; ``start()`` runs in a background
    thread. Counters: ``received``, ``succeeded``, ``failed``, ``ack_errors``
    (acks the server refused, e.g. the lease had expired), ``acks_resent``
    (sent again because the stream broke before the server confirmed them; a
    resent ack the server had already applied is refused and counts in
    ``ack_errors`` too), ``extended``,
    ``extension_errors``, ``nacked`` (jobs refused while stopping),
    ``reconnects``.
    """

    def __init__(
        self,
        target: str,
        queues: Sequence[str] | str,
        handler: Handler,
        *,
        concurrency: int = 4,
        max_in_flight: int | None = None,
        worker_id: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel_options: Sequence[tuple[str, Any]] = (),
        tls_ca: str | bytes | None = None,
        tls_cert: str | bytes | None = None,
        tls_key: str | bytes | None = None,
        token: str | None = None,
        reconnect_initial: float = 0.1,
        reconnect_max: float = 5.0,
    ) -> None:
        if isinstance(queues, str):
            queues = [queues]
        queues = list(queues)
        if not queues or not all(isinstance(q, str) and q for q in queues):
            raise errors.InvalidArgument("queues", "give one or more non-empty queue names")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise errors.InvalidArgument("concurrency", "must be a positive int")
        if max_in_flight is None:
            max_in_flight = 2 * concurrency
        if not isinstance(max_in_flight, int) or not 1 <= max_in_flight <= 10_000:
            raise errors.InvalidArgument("max_in_flight", "must be in 1..10000")
        if not callable(handler):
            raise errors.InvalidArgument("handler", "must be callable")
        self.target = target
        self.queues = tuple(queues)
        self.handler = handler
        self.concurrency = concurrency
        self.max_in_flight = max_in_flight
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{random.getrandbits(24):06x}"
        credentials, metadata = security(credentials, metadata, tls_ca=tls_ca, tls_cert=tls_cert,
                                         tls_key=tls_key, token=token)
        self._credentials = credentials
        self._metadata = tuple(metadata)
        self._channel_options = tuple(channel_options)
        self._reconnect_initial = reconnect_initial
        self._reconnect_max = reconnect_max

        self.received = 0
        self.succeeded = 0
        self.failed = 0
        self.ack_errors = 0
        self.acks_resent = 0
        self.extended = 0
        self.extension_errors = 0
        self.nacked = 0
        self.reconnects = 0
        self.error: BaseException | None = None  # what ended run() abnormally

        # One lock, several conditions: state changes are small and a single
        # lock keeps the invariants (buffers, in-flight, unconfirmed) simple.
        self._lock = threading.Lock()
        self._out_cv = threading.Condition(self._lock)  # request generator waits
        self._keeper_cv = threading.Condition(self._lock)  # lease keeper waits
        self._idle_cv = threading.Condition(self._lock)  # drain waits
        self._acks: list[worker_pb2.AckItem] = []
        self._exts: list[worker_pb2.LeaseExtension] = []
        self._unconfirmed: dict[tuple[str, int], worker_pb2.AckItem] = {}
        self._running: dict[tuple[str, int, int], _Running] = {}
        self._nacked_keys: set[tuple[str, int]] = set()
        self._heap: list[tuple[float, int, tuple[str, int, int]]] = []
        self._seq = itertools.count(1)
        self._conn_gen = 0
        self._connected = False
        self._closing = False  # half-close the stream once the buffer is empty
        self._finished = False  # run() is over: keeper exits

        self._stopping = threading.Event()
        self._done = threading.Event()
        self._started = False
        self._background = False
        self._got_response = False
        self._stop_timeout = 30.0
        self._run_thread: threading.Thread | None = None
        self._call: Any = None
        self._channel: grpc.Channel | None = None
        # received jobs waiting for a handler thread (guarded by _lock)
        self._work: collections.deque[_Running] = collections.deque()
        self._work_cv = threading.Condition(self._lock)  # handler threads wait

    # ------------------------------------------------------------ public

    def run(self) -> None:
        """Serve until ``stop()`` (or Ctrl-C, which stops gracefully and re-raises).

        Raises the mapped ``wheelsched.errors`` exception if the server
        refuses the subscription for good (INVALID_ARGUMENT and the like).
        """
        with self._lock:
            if self._started:
                raise RuntimeError("a Worker runs once; make a new one")
            self._started = True
            self._run_thread = threading.current_thread()
        if self._stopping.is_set():
            self._done.set()
            return
        self._channel = open_channel(self.target, self._credentials, self._channel_options)
        for i in range(self.concurrency):
            threading.Thread(target=self._handler_loop, name=f"wheelsched-handler_{i}", daemon=True).start()
        keeper = threading.Thread(target=self._keep_leases, name="wheelsched-leases", daemon=True)
        conn = threading.Thread(target=self._connection_loop, name="wheelsched-stream", daemon=True)
        keeper.start()
        conn.start()
        interrupted: BaseException | None = None
        try:
            while not self._stopping.wait(0.5):  # a timeout keeps Ctrl-C deliverable
                pass
        except KeyboardInterrupt as exc:
            interrupted = exc
            self._stopping.set()
        try:
            self._drain(conn)
        finally:
            with self._lock:
                self._finished = True
                self._keeper_cv.notify_all()
                self._work_cv.notify_all()  # handlers end; jobs not started lapse with their leases
                self._work.clear()
            self._channel.close()
            self._done.set()
        if interrupted is not None:
            raise interrupted
        if self.error is not None:
            raise self.error

    def start(self) -> Worker:
        """Run in a background (daemon) thread; returns self."""
        self._background = True
        t = threading.Thread(target=self._run_background, name="wheelsched-worker", daemon=True)
        t.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, let running handlers finish and their acks be
        confirmed, then close the stream. Returns when done or after about
        ``timeout`` seconds; jobs whose handlers are still running then are
        re-delivered when their leases run out. Jobs dispatched after
        ``stop()`` are refused (acked as retryable failures).

        Raises the error that ended a background ``start()``, if any.
        Do not call it from inside a handler (it waits for handlers).
        """
        self._stop_timeout = timeout
        self._stopping.set()
        if threading.current_thread() is self._run_thread or not self._started:
            return  # e.g. a signal handler on the run() thread: run() drains
        self._done.wait(timeout + 10.0)
        if self._background and self.error is not None:
            raise self.error

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker has finished; True if it has."""
        return self._done.wait(timeout)

    @property
    def in_flight(self) -> int:
        """Jobs received and not yet acked."""
        return len(self._running)

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ run() helpers

    def _run_background(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # kept for stop(); a daemon thread has nobody to tell
            if self.error is None:
                self.error = exc

    def _drain(self, conn: threading.Thread) -> None:
        deadline = time.monotonic() + self._stop_timeout
        with self._lock:
            # handlers first: their acks must exist before the buffer can empty
            while self._running and (left := deadline - time.monotonic()) > 0:
                self._idle_cv.wait(left)
            # then until the handlers' acks are confirmed (only a live stream
            # confirms). Not the nacks of jobs refused while stopping: each
            # nack frees credit the server refills, so waiting for them
            # could go on for as long as jobs are due.
            pending = {(a.job_id, a.attempt) for a in self._acks} | set(self._unconfirmed)
            pending.difference_update(self._nacked_keys)
            while (
                self._connected
                and (left := deadline - time.monotonic()) > 0
                and (
                    not pending.isdisjoint(self._unconfirmed)
                    or any((a.job_id, a.attempt) in pending for a in self._acks)
                )
            ):
                self._idle_cv.wait(left)
            self._closing = True
            self._out_cv.notify_all()
        # a server ends the stream promptly after the half-close; if it does
        # not, cancelling is all that is left
        conn.join(max(0.0, min(5.0, deadline - time.monotonic())))
        if conn.is_alive():
            call = self._call
            if call is not None:
                call.cancel()
            conn.join(2.0)
        with self._lock:
            leftovers, self._acks = self._acks, []
        if leftovers and self._channel is not None:
            self._ack_unary(leftovers, max(0.5, min(2.0, deadline - time.monotonic())))

    def _ack_unary(self, acks: list[worker_pb2.AckItem], timeout: float) -> None:
        """Last resort while stopping without a stream: the unary Ack RPC."""
        stub = worker_pb2_grpc.WorkerStub(self._channel)
        try:
            response = stub.Ack(
                worker_pb2.AckRequest(acks=acks), timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError as err:
            with self._lock:
                self.ack_errors += len(acks)
            log.warning("could not deliver %d acks while stopping: %s", len(acks), from_rpc_error(err))
            return
        with self._lock:
            self.ack_errors += sum(1 for r in response.results if r.code)

    # ------------------------------------------------------------ the stream

    def _connection_loop(self) -> None:
        attempt = 0
        try:
            while not self._stopping.is_set():
                started = time.monotonic()
                self._got_response = False
                try:
                    self._stream_once()
                    failure: BaseException | None = None
                except grpc.RpcError as err:
                    if err.code() in _FATAL_CODES:
                        self.error = from_rpc_error(err)
                        self._stopping.set()
                        return
                    failure = err
                finally:
                    self._disconnected()
                if self._stopping.is_set():
                    return
                if self._got_response or time.monotonic() - started > 5.0:
                    attempt = 0
                delay = min(self._reconnect_max, self._reconnect_initial * 2**attempt)
                delay = delay / 2 + random.uniform(0, delay / 2)  # "equal jitter"
                attempt = min(attempt + 1, 30)
                self.reconnects += 1
                if failure is not None:
                    code = failure.code()  # type: ignore[attr-defined]
                    log.warning(
                        "worker stream to %s broke (%s); reconnecting in %.2fs",
                        self.target,
                        code.name if code else "?",
                        delay,
                    )
                self._stopping.wait(delay)
        except BaseException as exc:  # a bug here must not leave run() waiting forever
            self.error = exc
            self._stopping.set()

    def _stream_once(self) -> None:
        assert self._channel is not None
        stub = worker_pb2_grpc.WorkerStub(self._channel)
        with self._lock:
            self._conn_gen += 1
            gen = self._conn_gen
            self._connected = True
        call = stub.StreamJobs(self._requests(gen), metadata=self._metadata)
        self._call = call
        for response in call:
            self._got_response = True
            if response.ack_results or response.extension_results:
                self._on_results(response)
            if response.dispatches:
                self._on_dispatches(response.dispatches)

    def _disconnected(self) -> None:
        """Stream over: the generator must stop, and acks it sent without a
        confirmation go back into the buffer for the next stream."""
        with self._lock:
            self._connected = False
            self._conn_gen += 1
            if self._unconfirmed:
                self.acks_resent += len(self._unconfirmed)
                self._acks[:0] = self._unconfirmed.values()
                self._unconfirmed.clear()
            self._exts.clear()  # stale; the keeper re-extends what still runs
            self._out_cv.notify_all()
            self._idle_cv.notify_all()
        self._call = None

    def _requests(self, gen: int) -> Iterator[worker_pb2.StreamJobsRequest]:
        yield worker_pb2.StreamJobsRequest(
            queues=self.queues, max_in_flight=self.max_in_flight, worker_id=self.worker_id
        )
        last_sent = 0.0
        while True:
            with self._lock:
                while not (self._acks or self._exts or self._closing) and self._conn_gen == gen:
                    self._out_cv.wait()
                if (len(self._acks) < _ACK_BATCH and not self._closing and self._conn_gen == gen
                        and time.monotonic() - last_sent < _ACK_BUSY_S):
                    self._out_cv.wait(_ACK_LINGER_S)  # woken early by a full batch or a close
                if self._conn_gen != gen or not (self._acks or self._exts):
                    return  # stream replaced, or closing with nothing left: half-close
                acks, self._acks = self._acks, []
                exts, self._exts = self._exts, []
                for a in acks:
                    self._unconfirmed[(a.job_id, a.attempt)] = a
            last_sent = time.monotonic()
            yield worker_pb2.StreamJobsRequest(acks=acks, extensions=exts)

    def _on_results(self, response: worker_pb2.StreamJobsResponse) -> None:
        with self._lock:
            for r in response.ack_results:
                self._unconfirmed.pop((r.job_id, r.attempt), None)
                if r.code:
                    self.ack_errors += 1
            for r in response.extension_results:
                if r.code:
                    self.extension_errors += 1
                else:
                    self.extended += 1
            if self._stopping.is_set():
                self._idle_cv.notify_all()

    def _on_dispatches(self, dispatches: Iterable[worker_pb2.Dispatch]) -> None:
        now = datetime.now(UTC)
        if self._stopping.is_set():
            nacks = [
                worker_pb2.AckItem(
                    job_id=d.job_id,
                    attempt=d.attempt,
                    epoch=d.epoch,
                    success=False,
                    error="worker stopping",
                    retryable=True,
                )
                for d in dispatches
            ]
            with self._lock:
                self.nacked += len(nacks)
                self._nacked_keys.update((a.job_id, a.attempt) for a in nacks)
                self._acks.extend(nacks)
                self._out_cv.notify()
            return
        mono = time.monotonic()
        batch: list[_Running] = []
        for d in dispatches:
            delivery = delivery_from_proto(d, now)
            if delivery.lease_timeout is not None:
                lease_s = max(delivery.lease_timeout.total_seconds(), _MIN_LEASE_S)
            elif delivery.lease_deadline is not None:
                lease_s = (delivery.lease_deadline - now).total_seconds()
                if lease_s >= 2.0:
                    lease_s = float(round(lease_s))  # transit time, not a real lease length
                lease_s = max(lease_s, _MIN_LEASE_S)
            else:
                lease_s = 30.0
            batch.append(_Running(delivery, (delivery.job_id, delivery.attempt, delivery.epoch), lease_s))
        with self._lock:
            heap = self._heap
            head = heap[0][0] if heap else None
            for r in batch:
                r.seq = next(self._seq)
                self._running[r.key] = r
                heapq.heappush(heap, (mono + r.lease_s / 2, r.seq, r.key))
            self.received += len(batch)
            # The keeper sleeps until the earliest extension is due, so it
            # needs waking only if that moved: a woken thread competes with
            # this one for the GIL, and this one should be back reading.
            if head is None or heap[0][0] < head:
                self._keeper_cv.notify()
            # One hand-over per message, not one executor task per job. (Waking
            # one handler and letting each wake the next cost the stream
            # reader less, but at 20,000 jobs/s the jobs then waited up to
            # 16 ms for a handler instead of ~2 ms.)
            self._work.extend(batch)
            self._work_cv.notify(len(batch))

    # ------------------------------------------------------------ handlers and leases

    def _handler_loop(self) -> None:
        """One of ``concurrency`` handler threads: run a job, then, under one
        lock, buffer its ack and take the next job."""
        lock, work, cv = self._lock, self._work, self._work_cv
        done: tuple[_Running, worker_pb2.AckItem] | None = None
        while True:
            with lock:
                if done is not None:
                    self._record_ack(*done)
                    done = None
                while not work and not self._finished:
                    cv.wait()
                if self._finished:
                    return
                running = work.popleft()
            done = (running, self._run_handler(running))

    def _run_handler(self, running: _Running) -> worker_pb2.AckItem:
        d = running.delivery
        try:
            self.handler(d)
        except PermanentFailure as exc:
            error, retryable = repr(exc), False
        except BaseException as exc:
            error, retryable = repr(exc), True
        else:
            return worker_pb2.AckItem(job_id=d.job_id, attempt=d.attempt, epoch=d.epoch, success=True)
        return worker_pb2.AckItem(job_id=d.job_id, attempt=d.attempt, epoch=d.epoch, success=False,
                                  error=error[:MAX_ERROR_TEXT], retryable=retryable)

    def _record_ack(self, running: _Running, item: worker_pb2.AckItem) -> None:
        """Under ``_lock``: the job is done; its ack goes in the buffer."""
        self._running.pop(running.key, None)
        acks = self._acks
        acks.append(item)
        if item.success:
            self.succeeded += 1
        else:
            self.failed += 1
        if len(acks) == 1 or len(acks) >= _ACK_BATCH:
            self._out_cv.notify()  # the generator waits for the first, or lingers for a batch
        if self._stopping.is_set():
            self._idle_cv.notify_all()

    def _keep_leases(self) -> None:
        """Extend the lease of every job whose handler ran half its lease."""
        with self._lock:
            heap = self._heap
            while not self._finished:
                now = time.monotonic()
                queued = False
                while heap and heap[0][0] <= now:
                    _, seq, key = heapq.heappop(heap)
                    r = self._running.get(key)
                    if r is None or r.seq != seq:
                        continue  # acked since, or rescheduled
                    d = r.delivery
                    self._exts.append(
                        worker_pb2.LeaseExtension(
                            job_id=d.job_id, attempt=d.attempt, epoch=d.epoch, extend_by_ms=r.lease_ms
                        )
                    )
                    r.seq = next(self._seq)
                    heapq.heappush(heap, (now + r.lease_s / 2, r.seq, key))
                    queued = True
                if queued:
                    self._out_cv.notify()
                if len(heap) > 2 * len(self._running) + 1024:
                    # entries of acked jobs are dropped lazily; compact when they dominate
                    heap[:] = [e for e in heap if (r := self._running.get(e[2])) and r.seq == e[1]]
                    heapq.heapify(heap)
                self._keeper_cv.wait(heap[0][0] - now if heap else None)
