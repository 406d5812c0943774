"""``Committer``: the writer thread, one per node, shared by all its logs.

Why one thread and not one per log
----------------------------------
A node has one log per shard (16 by default) and the engine appends to
every shard an engine call touched, at the end of that call. With a writer
thread per log, one tick that fired jobs on 10 shards woke 10 threads, and
each of them had to take the GIL from the event loop to write a few hundred
bytes. The loop (and the ticker thread that wakes it) then waited for the
GIL behind them: in the engine mode of bench/fire_latency.py at 20,000
jobs/s with 1M jobs pending (timestamps added for the measurement), fire
lateness was p50 0.49 ms with 16 writer threads, 0.22 ms with 4, and
0.16 ms with an in-memory log. One thread per node wakes once per engine
call, whatever the number of shards.

One round
---------
The thread sleeps until a log queues records (``WriteAheadLog.append`` wakes
it when the log's queue goes from empty to non-empty, so a burst of appends
costs one wake-up), a log asks for a sync, closes, or an ``interval`` fsync
falls due. The wake-up is a ``queue.SimpleQueue`` put, done in C: with a
``threading.Condition`` it was ~20 lines of Python on the event loop for
each log an engine call appended to. Then, for every log with work, in three passes:

1. take its queue and write it with one ``write`` (the log's own code:
   segment rolls, the fence check before writing);
2. fsync the logs whose policy asks for it (one after the other);
3. publish each log's new durable seq (the fence check before publishing).

Writing every batch before the first fsync lets the disk work on all of
them at once, and no log's waiters are released before its data is synced.
The fsyncs of one round run one after the other, on this thread: with
``always`` a round that touched n shards takes n fsyncs (~0.1 ms each on
this machine's disk). Parallel fsyncs were tried and measured in one
session: a pool of 8 threads raised ``bench.schedule``'s batches from 4
threads into 16 shards from 20.0k to 24.9k jobs/s, but the extra thread
wake-ups took the GIL from the event loop often enough to raise the node's
dispatch lateness in ``bench.fire_latency --modes grpc --rate 10000`` from
p99 3.9 to 9.3 ms; splitting a round over two threads gained nothing
(19.9k jobs/s). Fire latency is the point of the product, so: sequential.
Records appended meanwhile wait for the next round and are committed together
(group commit across shards as well as within one).

Waiting on many logs at once
----------------------------
A node's call that touched many shards (a worker's batch of acks, a batch
of schedules) must wait until each of those logs is durable through its
seq. One future per log, gathered, cost the event loop a future, a heap
entry, a wake-up callback and a gather callback per log, for a batch whose
logs are all published by the same round anyway. ``wait_all`` registers
the batch once: after each round this thread checks the batches still
waiting and resolves those now covered with one ``call_soon_threadsafe``
per event loop.

A failure of one log (an I/O error, being fenced) fails that log only; the
thread carries on with the others. A log opened without a committer gets
a private one, which ends when the log closes: a single log behaves as it
always did.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .log import WriteAheadLog

# A batch of (log, seq) waiting in ``wait_all``: its loop and its future.
_Barrier = tuple[list[tuple["WriteAheadLog", int]], asyncio.AbstractEventLoop, "asyncio.Future[None]"]


def _barrier_state(pending: list[tuple[WriteAheadLog, int]]) -> BaseException | bool:
    """True: every log is durable through its seq; an exception: one failed
    first; False: still waiting."""
    for wal, seq in pending:
        if seq > wal._durable_seq:
            return wal._failure() if wal._failed is not None else False
    return True


def _resolve(items: list[tuple[asyncio.Future[None], BaseException | bool]]) -> None:
    # runs in the futures' loop
    for fut, state in items:
        if not fut.done():
            if state is True:
                fut.set_result(None)
            else:
                fut.set_exception(state)  # type: ignore[arg-type]  # not False: released



class Committer:
    """Writes, fsyncs and publishes for any number of ``WriteAheadLog``\\ s."""

    def __init__(self, name: str = "wal-writer") -> None:
        self.name = name
        # Logs with work, each at most once (its _queued flag); None nudges
        # the thread to look at _stopping (see "One round" on why a queue).
        self._wakeups: queue.SimpleQueue[WriteAheadLog | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards the fields below
        self._timed: set[WriteAheadLog] = set()  # logs with written data owed a timed fsync
        self._members = 0
        self._barriers: list[_Barrier] = []  # wait_all batches not yet durable
        self._stopping = False
        self._thread: threading.Thread | None = None

    def attach(self, wal: WriteAheadLog) -> None:
        """A log opened: start the thread with the first member."""
        with self._lock:
            if self._stopping:
                raise RuntimeError(f"committer {self.name} is closed")
            self._members += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
                self._thread.start()

    def wake(self, wal: WriteAheadLog) -> None:
        """``wal`` has work (the caller set its ``_queued`` flag first, so a
        log is queued at most once)."""
        self._wakeups.put(wal)

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread once every member has closed (idempotent)."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wakeups.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    async def wait_all(self, waits: Mapping[WriteAheadLog, int], urgent: bool = True) -> None:
        """Until every log in ``waits`` (this committer's) is durable through
        its seq, with one future for them all; raises the first failed log's
        error, and takes ``urgent``, as ``WriteAheadLog.wait_durable``."""
        pending = [(wal, seq) for wal, seq in waits.items() if seq > wal._durable_seq]
        if not pending:
            return
        for wal, seq in pending:
            wal._check_waitable(seq)
            if urgent:
                wal._want_sync(seq)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        # Checked again under the lock: a round that published meanwhile
        # checks its barriers under it too, so one of the two sees both.
        with self._lock:
            state = _barrier_state(pending)
            if state is False:
                self._barriers.append((pending, loop, fut))
        if state is not False:
            _resolve([(fut, state)])
        await fut

    def _release_barriers(self) -> None:
        """Resolve the ``wait_all`` batches now durable (or failed); called
        after each round's publish and by a log that failed."""
        ready: dict[asyncio.AbstractEventLoop, list] = {}
        with self._lock:
            if not self._barriers:
                return
            waiting = []
            for barrier in self._barriers:
                state = _barrier_state(barrier[0])
                if state is False:
                    waiting.append(barrier)
                else:
                    ready.setdefault(barrier[1], []).append((barrier[2], state))
            self._barriers = waiting
        for loop, items in ready.items():
            with contextlib.suppress(RuntimeError):  # loop closed: its waiters are gone with it
                loop.call_soon_threadsafe(_resolve, items)

    # ------------------------------------------------------------------ thread
    def _next_batch(self) -> list[WriteAheadLog] | None:
        """Wait for work; None when stopping with no member left. Interval
        logs whose fsync is due join the batch even while other logs keep
        the thread busy."""
        wakeups = self._wakeups
        while True:
            timeout = None
            due: list[WriteAheadLog] = []
            with self._lock:
                if self._stopping and self._members <= 0 and wakeups.empty():
                    return None
                if self._timed:
                    now = time.monotonic()
                    due = [w for w in self._timed if w._next_fsync <= now]
                    if not due:
                        timeout = min(w._next_fsync for w in self._timed) - now
            try:
                woken = [wakeups.get_nowait() if due else wakeups.get(timeout=timeout)]
            except queue.Empty:
                woken = []
            while not wakeups.empty():  # this thread is the only consumer
                woken.append(wakeups.get_nowait())
            batch = [w for w in woken if w is not None]
            batch += [w for w in due if w not in batch]
            if batch:
                return batch

    def _detach(self, wal: WriteAheadLog) -> None:
        """``wal`` closed or failed: it leaves (called once per log, by the log)."""
        with self._lock:
            self._members -= 1
            self._timed.discard(wal)
            last = self._stopping and self._members <= 0
        if last:
            self._wakeups.put(None)

    def _main(self) -> None:
        while (wals := self._next_batch()) is not None:
            # Each step handles its log's errors itself (the log fails, and
            # leaves); None means the log is finished for this round.
            written = [(w, s) for w in wals if (s := w._commit_write()) is not None]
            synced = [(w, s, t) for w, s in written if (t := w._commit_sync(s)) is not None]
            for wal, state, through in synced:
                timed = wal._commit_publish(state, through)
                with self._lock:
                    if timed:
                        self._timed.add(wal)
                    else:
                        self._timed.discard(wal)
            if self._barriers:
                self._release_barriers()
