"""Fire latency: how late a due job reaches its consumer, at a steady rate,
on top of a full wheel — the engine, a real node over gRPC, and baselines,
in the same run (issue #5).

    .venv/bin/python -m bench.fire_latency [--quick] [--smoke] [--json PATH] [--plot PATH]
        [--modes engine,grpc,asyncio,heapq,apscheduler,floor] [--rate R] [--jobs N]
        [--pending P] [--sweep-rate]

N jobs fall due at a steady rate R (due_i = start + i/R) while P other jobs
are pending a day ahead. Lateness = the moment the job is in its consumer's
hands - its due time (the due time the benchmark chose, not one the
scheduler reports). Each mode runs in a fresh subprocess.

* ``engine``: ``Engine`` (16 shards, 100 µs ticks, the C wheel) with the
  node's ``Ticker`` waking an asyncio loop (the C one: a GIL-free thread
  and an eventfd; the Python one: a thread calling
  ``call_soon_threadsafe``), exactly as ``Node`` wires them; logs are real
  ``WriteAheadLog``s with fsync ``never`` sharing one writer thread, as in
  the node (``--engine-log mem``: MemoryLog).
  The P pending jobs are scheduled first, then ``gc.collect(); gc.freeze()``
  as the node does after recovery, and ``os.sync()`` (their log on disk
  before the window, not written back in the middle of it). All N jobs are
  scheduled ahead of time (``engine.schedule``, batches of 10,000) before
  the first is due. The consumer is a subscription (max_in_flight 10,000)
  whose deliver callback takes ``time.time_ns()`` once per delivered batch
  and queues an ack (``engine.ack`` via ``loop.call_soon``), so the loop
  does a worker's acks too.
* ``grpc``: a real ``wheelsched serve`` subprocess (fsync ``always``) whose
  data dir was prepared with the P pending jobs (written through the
  engine on the node's own logs, fsync ``never``, then ``os.sync()`` as in
  the engine mode, and replayed by the node at start, as after a
  restart), one ``Worker`` in its own process (concurrency 4,
  max_in_flight 2,000; ``gc.freeze()`` after start-up), the N jobs scheduled ahead through
  ``Client.schedule_many`` (chunks of 1,000). Lateness is taken at handler
  entry (``time.time_ns()``); ``recv`` columns in the JSON use
  ``delivery.received_at``, ``sent`` columns the node's dispatch time
  (``lease_deadline - lease_timeout``: the engine sets the deadline to its
  clock at dispatch plus the lease), so the legs node / wire and worker
  read / handler queue can be told apart.
* ``asyncio``: ``loop.call_at`` (P callbacks pending a day ahead, N due),
  measured with ``time.monotonic_ns()`` against due times on the same clock.
* ``heapq``: a thread over a heap of (due, id) with the P entries, sleeping
  (``time.sleep``) until the head is due.
* ``apscheduler``: APScheduler 3 ``BackgroundScheduler``, memory job store,
  date triggers, misfire grace unlimited; add_job is ~100 µs and its store
  inserts in O(n), so P and N are capped at 20,000 (said in the table).
* ``floor``: a C helper (built with ``cc`` into a temp dir) sleeping to
  absolute deadlines 1 ms apart with ``clock_nanosleep(TIMER_ABSTIME)``:
  the machine's wake-up lateness. Falls back to ``time.sleep`` without cc.

``--sweep-rate`` raises R (N = R x a few seconds) per mode in one process
until p99 > 10 ms or jobs fall behind, and reports the highest rate that held.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import heapq
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from typing import Any

from bench._common import Progress, StealSampler, base_parser, print_table, ratio, write_json

MODES = ("engine", "grpc", "asyncio", "heapq", "apscheduler", "floor")
DAY_NS = 86_400 * 10**9
P99_BOUND_MS = 10.0
APS_CAP = 20_000
SWEEP_RATES = (5_000, 10_000, 20_000, 30_000, 50_000, 75_000, 100_000, 150_000, 200_000)
QUEUE = "bench"

# ------------------------------------------------------------------ statistics


def summarize(lat_ns: array, expected: int, unique: int, span_ns: int) -> dict[str, Any]:
    """Percentiles in ms, early fires, lost jobs and the achieved rate."""
    xs = sorted(lat_ns)
    n = len(xs)

    def pct(p: float) -> float | None:
        if not n:
            return None
        return xs[min(n - 1, int(p / 100.0 * n))] / 1e6

    return {
        "count": n, "expected": expected, "lost": expected - unique, "duplicates": n - unique,
        "early": sum(1 for x in xs if x < 0) if n and xs[0] < 0 else 0,
        "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "p999_ms": pct(99.9),
        "max_ms": xs[-1] / 1e6 if n else None,
        "mean_ms": sum(xs) / n / 1e6 if n else None,
        "achieved_rate": unique / (span_ns / 1e9) if span_ns > 0 else None,
    }


def dues_ns(start_ns: int, n: int, rate: float) -> array:
    """Due times in ns, as an array: the benchmark's own bookkeeping must not
    cost the measured process collector time (a list of 200,000 ints is
    one object a full collection walks item by item: ~4 ms here)."""
    return array("q", [start_ns + int(i * 1e9 / rate) for i in range(n)])


def lead_s(n: int, per_job_s: float, floor_s: float = 1.0) -> float:
    """How far ahead the first job is due: time to schedule all of them, with margin."""
    return floor_s + n * per_job_s


class Step:
    """One measured run at one rate inside a child process."""

    def __init__(self, rate: float, n: int, pending: int) -> None:
        self.rate, self.n, self.pending = rate, n, pending
        self.lat = array("q")
        self.recv_lat = array("q")  # grpc: delivery.received_at - due
        # grpc: when the node dispatched (lease_deadline - lease_timeout: the
        # engine sets the deadline to its clock at dispatch + the lease) - due
        self.sent_lat = array("q")
        self.unique = 0
        self.span_ns = 0
        self.scheduled_late = 0  # jobs whose scheduling finished after they were due
        self.first_due_wall = 0  # the first job's due time on the wall clock (ns): the window's start
        self.notes: list[str] = []

    def result(self, out_dir: Path, tag: str) -> dict[str, Any]:
        path = out_dir / f"{tag}-{int(self.rate)}.lat"
        path.write_bytes(self.lat.tobytes())
        res = {"rate": self.rate, "jobs": self.n, "pending": self.pending, "lat_path": str(path),
               "scheduled_late": self.scheduled_late, "notes": self.notes,
               "window_wall_ns": [self.first_due_wall, self.first_due_wall + self.span_ns]
               if self.first_due_wall and self.span_ns > 0 else None,
               **summarize(self.lat, self.n, self.unique, self.span_ns)}
        if self.recv_lat:
            res["recv"] = summarize(self.recv_lat, self.n, self.unique, self.span_ns)
        if self.sent_lat:
            res["sent"] = summarize(self.sent_lat, self.n, self.unique, self.span_ns)
        return res


def passes(res: dict[str, Any]) -> bool:
    """A rate is sustained: nothing lost, p99 within the bound, and the
    jobs kept pace (achieved rate within 10% of the offered rate)."""
    return (res["lost"] == 0 and res["p99_ms"] is not None and res["p99_ms"] <= P99_BOUND_MS
            and (res["achieved_rate"] or 0) >= 0.9 * res["rate"])


# ------------------------------------------------------------------ engine mode


def _engine_child(args: argparse.Namespace, rates: list[float], out_dir: Path) -> list[dict[str, Any]]:
    from wheelsched.engine import AckItem, Engine, EngineConfig, JobRequest
    from wheelsched.engine.memlog import MemoryLog
    from wheelsched.gcutil import untracked
    from wheelsched.server.ticker import Ticker, wall_us
    from wheelsched.wal import Committer, WALOptions, WriteAheadLog
    from wheelsched.wheel import TimingWheel

    log_dir = out_dir / "engine-wal"
    committer = Committer()  # one writer thread for all shards, as the node has
    if args.engine_log == "mem":
        def open_log(shard: int) -> Any:
            return MemoryLog()
    else:
        def open_log(shard: int) -> Any:
            return WriteAheadLog(log_dir / f"{shard:04d}", WALOptions(fsync="never"), meta={"shard": shard},
                                 committer=committer)

    engine = Engine(EngineConfig(shard_count=16, tick_us=args.tick_us), clock=wall_us,
                    open_log=open_log, wheel_factory=TimingWheel)
    engine.recover()
    far = wall_us() + DAY_NS // 1000
    for lo in range(0, args.pending, 10_000):
        engine.schedule([JobRequest(queue="far", id=f"far-{i}", due_us=far + i)
                         for i in range(lo, min(args.pending, lo + 10_000))])
    gc.collect()
    gc.freeze()
    if args.engine_log == "wal":
        # The P jobs' records (110 MB at P = 1M) are still dirty in the page
        # cache; the kernel writes them back ~30 s after they were written,
        # inside the measured window, and on this VM that write-back took
        # both vCPUs away for 20-30 ms at a time (steal). A node that has
        # been up a while has no such backlog: put it on disk first.
        os.sync()
    results = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ticker: Ticker

        def on_tick() -> None:
            try:
                engine.tick()
            finally:
                ticker.set_target(engine.next_wakeup_us())

        ticker = Ticker(loop, on_tick)
        ticker.start()
        state: dict[str, Any] = {}

        def ack(items: list) -> None:
            engine.ack(items)
            ticker.set_target(engine.next_wakeup_us())

        def deliver(deliveries: list) -> None:
            t = time.time_ns()
            step: Step = state["step"]
            due = state["due"]
            seen = state["seen"]
            lat = step.lat
            items = []
            fresh = 0
            for d in deliveries:
                job = d.job
                i = int(job.id.rpartition("-")[2])
                lat.append(t - due[i])
                fresh += 1 - seen[i]
                seen[i] = 1
                # untracked: built in one C call (0.11 µs here, the NamedTuple's own 0.31)
                items.append(untracked(AckItem, (job.id, job.attempt, d.epoch, True, "", True)))
            state["unique"] += fresh
            state["last"] = t
            loop.call_soon(ack, items)

        engine.subscribe([QUEUE], 10_000, deliver, "bench")
        for k, rate in enumerate(rates):
            n = max(1, int(rate * args.seconds)) if args.sweep else args.jobs
            step = Step(rate, n, args.pending)
            start = time.time_ns() + int(lead_s(n, 40e-6) * 1e9)
            due = dues_ns(start, n, rate)
            # whole µs, never earlier
            due = array("q", [(d // 1000 + (1 if d % 1000 else 0)) * 1000 for d in due])
            # seen: a flag per job, not a set of ints (see dues_ns)
            state.update(step=step, due=due, seen=bytearray(n), unique=0, last=0)
            step.first_due_wall = due[0]
            for lo in range(0, n, 10_000):
                engine.schedule([JobRequest(queue=QUEUE, id=f"s{k}-{i}", due_us=due[i] // 1000)
                                 for i in range(lo, min(n, lo + 10_000))])
                await asyncio.sleep(0)
            ticker.set_target(engine.next_wakeup_us())
            done_at = time.time_ns()
            step.scheduled_late = sum(1 for d in due if d < done_at)
            deadline = due[-1] + int(args.grace * 1e9)
            while state["unique"] < n and time.time_ns() < deadline:
                await asyncio.sleep(0.05)
            step.unique = state["unique"]
            step.span_ns = state["last"] - due[0]
            res = step.result(out_dir, "engine")
            res["log"] = "MemoryLog" if args.engine_log == "mem" else "WriteAheadLog(fsync=never)"
            results.append(res)
            _progress(args, k + 1, len(rates))
            if args.sweep and not passes(res):
                break
        ticker.stop()

    asyncio.run(main())
    engine.close()
    committer.close()
    return results


# ------------------------------------------------------------------ asyncio, heapq, apscheduler, floor


def _asyncio_child(args: argparse.Namespace, rates: list[float], out_dir: Path) -> list[dict[str, Any]]:
    results = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        far = loop.time() + 86_400

        def noop() -> None:
            pass

        for i in range(args.pending):
            loop.call_at(far + i * 1e-6, noop)
        gc.collect()
        gc.freeze()
        for k, rate in enumerate(rates):
            n = max(1, int(rate * args.seconds)) if args.sweep else args.jobs
            step = Step(rate, n, args.pending)
            last = [0]

            mono = time.monotonic_ns

            def fire(due: int, lat: array = step.lat, last: list = last) -> None:
                t = time.monotonic_ns()
                lat.append(t - due)
                last[0] = t

            start = mono() + int(lead_s(n, 5e-6) * 1e9)
            due = dues_ns(start, n, rate)
            step.first_due_wall = due[0] + time.time_ns() - mono()
            for d in due:
                loop.call_at(d / 1e9, fire, d)
            deadline = due[-1] + int(args.grace * 1e9)
            while len(step.lat) < n and time.monotonic_ns() < deadline:
                await asyncio.sleep(0.05)
            step.unique = len(step.lat)
            step.span_ns = last[0] - due[0]
            results.append(step.result(out_dir, "asyncio"))
            _progress(args, k + 1, len(rates))
            if args.sweep and not passes(results[-1]):
                break

    asyncio.run(main())
    return results


def _heapq_child(args: argparse.Namespace, rates: list[float], out_dir: Path) -> list[dict[str, Any]]:
    results = []
    far = time.monotonic_ns() + DAY_NS
    base = [(far + i, -1) for i in range(args.pending)]  # a sorted list is a heap
    gc.collect()
    gc.freeze()
    for k, rate in enumerate(rates):
        n = max(1, int(rate * args.seconds)) if args.sweep else args.jobs
        step = Step(rate, n, args.pending)
        start = time.monotonic_ns() + int(lead_s(n, 2e-6) * 1e9)
        due = dues_ns(start, n, rate)
        step.first_due_wall = due[0] + time.time_ns() - time.monotonic_ns()
        heap = base
        for i, d in enumerate(due):
            heapq.heappush(heap, (d, i))
        lat = step.lat
        deadline = due[-1] + int(args.grace * 1e9)

        def run(heap: list = heap, lat: array = lat, n: int = n, deadline: int = deadline,
                step: Step = step, first: int = due[0]) -> None:
            mono, pop, sleep = time.monotonic_ns, heapq.heappop, time.sleep
            got = 0
            while got < n:
                d = heap[0][0]
                now = mono()
                if d <= now:
                    pop(heap)
                    lat.append(mono() - d)
                    got += 1
                elif now > deadline:
                    return
                else:
                    sleep((d - now) / 1e9)
            step.span_ns = mono() - first

        t = threading.Thread(target=run, name="heapq-timer")
        t.start()
        t.join()
        step.unique = len(lat)
        results.append(step.result(out_dir, "heapq"))
        _progress(args, k + 1, len(rates))
        if args.sweep and not passes(results[-1]):
            break
    return results


def _apscheduler_child(args: argparse.Namespace, rates: list[float], out_dir: Path) -> list[dict[str, Any]]:
    from datetime import UTC, datetime

    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    results = []
    pending = min(args.pending, APS_CAP)
    sched = BackgroundScheduler(timezone=UTC, executors={"default": ThreadPoolExecutor(10)},
                                job_defaults={"misfire_grace_time": None, "coalesce": False})
    sched.start(paused=True)
    far_us = time.time_ns() // 1000 + DAY_NS // 1000

    def noop() -> None:
        pass

    for i in range(pending):
        sched.add_job(noop, "date", run_date=datetime.fromtimestamp((far_us + i) / 1e6, UTC))
    for k, rate in enumerate(rates):
        n = max(1, int(rate * args.seconds)) if args.sweep else args.jobs
        n = min(n, APS_CAP)
        step = Step(rate, n, pending)
        if pending < args.pending or n < (int(rate * args.seconds) if args.sweep else args.jobs):
            step.notes.append(f"capped at P={pending:,}, N={n:,} (O(n) job store inserts)")
        lat = step.lat
        lock = threading.Lock()
        last = [0]

        def fire(due: int, lat: array = lat, last: list = last, lock: Any = lock) -> None:
            t = time.time_ns()
            with lock:
                lat.append(t - due)
                last[0] = max(last[0], t)

        sched.pause()
        start = time.time_ns() + int(lead_s(n, 150e-6) * 1e9)
        due = array("q", [d // 1000 * 1000 for d in dues_ns(start, n, rate)])  # datetime holds µs
        step.first_due_wall = due[0]
        for d in due:
            sched.add_job(fire, "date", run_date=datetime.fromtimestamp(d / 1e9, UTC), args=(d,))
        sched.resume()
        step.scheduled_late = sum(1 for d in due if d < time.time_ns())
        deadline = due[-1] + int(args.grace * 1e9)
        while len(lat) < n and time.time_ns() < deadline:
            time.sleep(0.05)
        step.unique = len(lat)
        step.span_ns = last[0] - due[0]
        results.append(step.result(out_dir, "apscheduler"))
        _progress(args, k + 1, len(rates))
        if args.sweep and not passes(results[-1]):
            break
    sched.shutdown(wait=False)
    return results


FLOOR_C = r"""
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    long long interval = atoll(argv[2]);
    long long *lat = malloc(sizeof(long long) * (n > 0 ? n : 1));
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    long long next = (long long)t.tv_sec * 1000000000LL + t.tv_nsec + interval;
    for (long i = 0; i < n; i++) {
        struct timespec d = { next / 1000000000LL, next % 1000000000LL };
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &d, NULL) == EINTR) {}
        clock_gettime(CLOCK_MONOTONIC, &t);
        lat[i] = (long long)t.tv_sec * 1000000000LL + t.tv_nsec - next;
        next += interval;
    }
    fwrite(lat, sizeof(long long), n, stdout);
    return 0;
}
"""


def _floor_child(args: argparse.Namespace, rates: list[float], out_dir: Path) -> list[dict[str, Any]]:
    """Wake-ups 1 ms apart for as long as the N jobs take at rate R (same for every rate)."""
    results = []
    cc = shutil.which("cc")
    exe = None
    if cc:
        src = out_dir / "floor.c"
        src.write_text(FLOOR_C)
        exe = out_dir / "floor"
        built = subprocess.run([cc, "-O2", "-o", str(exe), str(src)], capture_output=True)
        if built.returncode != 0:
            exe = None
    for k, rate in enumerate(rates):
        n_jobs = max(1, int(rate * args.seconds)) if args.sweep else args.jobs
        n = max(100, min(int(n_jobs / rate * 1000), 60_000))
        step = Step(rate, n, 0)
        step.first_due_wall = time.time_ns() + 1_000_000
        if exe is not None:
            out = subprocess.run([str(exe), str(n), "1000000"], capture_output=True, check=True).stdout
            step.lat.frombytes(out)
            step.notes.append("C clock_nanosleep(TIMER_ABSTIME) every 1 ms")
        else:
            mono, sleep = time.monotonic_ns, time.sleep
            nxt = mono() + 1_000_000
            for _ in range(n):
                now = mono()
                if nxt > now:
                    sleep((nxt - now) / 1e9)
                step.lat.append(mono() - nxt)
                nxt += 1_000_000
            step.notes.append("no cc: Python time.sleep every 1 ms")
        step.unique = n
        step.span_ns = n * 1_000_000
        res = step.result(out_dir, "floor")
        res["achieved_rate"] = None  # a wake-up every 1 ms, not a job rate
        results.append(res)
        _progress(args, k + 1, len(rates))
        if args.sweep:
            break  # the floor does not depend on the rate
    return results


# ------------------------------------------------------------------ grpc mode


def _prepare_node_dir(data_dir: Path, pending: int) -> None:
    """Write P jobs pending a day ahead into a node data dir, through the
    engine on the node's own log layout (the node replays them at start)."""
    from wheelsched.engine import JobRequest
    from wheelsched.server.node import Node, NodeConfig, _check_data_dir
    from wheelsched.server.ticker import wall_us

    config = NodeConfig(data_dir=data_dir, fsync="never")
    _check_data_dir(config)
    engine = Node(config).engine
    engine.recover()
    far = wall_us() + DAY_NS // 1000
    for lo in range(0, pending, 10_000):
        engine.schedule([JobRequest(queue="far", id=f"far-{i}", due_us=far + i)
                         for i in range(lo, min(pending, lo + 10_000))])
    engine.close()


def _grpc_child(args: argparse.Namespace, rates: list[float], out_dir: Path) -> list[dict[str, Any]]:
    from bench._procs import start_node
    from wheelsched.client import Client, JobSpec

    data_root = out_dir / "grpc"
    data_root.mkdir()
    _prepare_node_dir(data_root / "node-data", args.pending)
    os.sync()  # the P jobs' log on disk before the node starts: see the engine mode
    records = out_dir / "worker.txt"
    results = []
    with start_node(data_root, fsync=args.node_fsync) as node:
        worker = subprocess.Popen([sys.executable, "-m", "bench.fire_latency", "--child", "worker",
                                   "--target", node.target, "--out", str(records)],
                                  stdin=subprocess.DEVNULL)
        try:
            with Client(node.target, timeout=120) as client:
                t_end = time.monotonic() + 60
                while client.status().workers < 1:
                    if time.monotonic() > t_end or worker.poll() is not None:
                        raise RuntimeError("the worker did not connect")
                    time.sleep(0.05)
                base_pending = sum(s.pending for s in client.status().shards)
                for k, rate in enumerate(rates):
                    n = max(1, int(rate * args.seconds)) if args.sweep else args.jobs
                    step = Step(rate, n, args.pending)
                    start = time.time_ns() + int(lead_s(n, 150e-6, 2.0) * 1e9)
                    due = array("q", [d // 1000 * 1000 for d in dues_ns(start, n, rate)])
                    step.first_due_wall = due[0]
                    specs = [JobSpec(queue=QUEUE, id=f"s{k}-{i}", due=due[i] / 1e9) for i in range(n)]
                    # the spec stores float seconds; check the round trip lands on the µs we chose
                    sent = specs[0].to_proto().schedule.due_time
                    if sent.seconds * 10**9 + sent.nanos != due[0]:
                        step.notes.append("due time rounding in the client differs by "
                                          f"{sent.seconds * 10**9 + sent.nanos - due[0]} ns")
                    chunks = [specs[i:i + 1000] for i in range(0, n, 1000)]
                    done_at = [0]

                    def feed(part: list, client: Client = client, done_at: list = done_at) -> None:
                        for c in part:
                            client.schedule_many(c, chunk=1000)
                        done_at[0] = max(done_at[0], time.time_ns())

                    feeders = [threading.Thread(target=feed, args=(chunks[j::2],)) for j in range(2)]
                    for t in feeders:
                        t.start()
                    for t in feeders:
                        t.join()
                    step.scheduled_late = sum(1 for d in due if d < done_at[0])
                    deadline = due[-1] + int(args.grace * 1e9)
                    while time.time_ns() < deadline:
                        if sum(s.pending for s in client.status().shards) <= base_pending:
                            break
                        time.sleep(0.1)
                    time.sleep(0.5)  # the worker flushes its records every 0.1 s
                    seen: set[int] = set()
                    last = 0
                    prefix = f"s{k}-"
                    with open(records) as f:
                        for line in f:
                            job_id, handler_ns, recv_ns, sent_ns = line.split()
                            if not job_id.startswith(prefix):
                                continue
                            i = int(job_id[len(prefix):])
                            h = int(handler_ns)
                            step.lat.append(h - due[i])
                            step.recv_lat.append(int(recv_ns) - due[i])
                            step.sent_lat.append(int(sent_ns) - due[i])
                            seen.add(i)
                            last = max(last, h)
                    step.unique = len(seen)
                    step.span_ns = last - due[0]
                    res = step.result(out_dir, "grpc")
                    res["node_fsync"] = args.node_fsync
                    results.append(res)
                    _progress(args, k + 1, len(rates))
                    if args.sweep and not passes(res):
                        break
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
    return results


def _worker_child(args: argparse.Namespace) -> None:
    """A Worker process: records (job id, handler-entry ns, received_at ns) to a file."""
    from wheelsched.client import Worker

    buf: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def handler(d: Any) -> None:
        t = time.time_ns()
        recv = int(d.received_at.timestamp() * 1e6) * 1000
        sent = recv
        if d.lease_deadline is not None and d.lease_timeout is not None:
            sent = int((d.lease_deadline - d.lease_timeout).timestamp() * 1e6) * 1000
        line = f"{d.job_id} {t} {recv} {sent}\n"
        with lock:
            buf.append(line)

    def flusher(f: Any) -> None:
        while True:
            stopped = stop.wait(0.1)
            with lock:
                lines = buf[:]
                buf.clear()
            f.write("".join(lines))
            f.flush()
            if stopped:
                return

    worker = Worker(args.target, [QUEUE], handler, concurrency=4, max_in_flight=2000)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with open(args.out, "w") as f:
        t = threading.Thread(target=flusher, args=(f,))
        t.start()
        worker.start()
        # As a latency-sensitive worker process should once it has started:
        # the start-up objects (grpc, protobuf, every module) leave the
        # collector's way. Unfrozen, each full collection here took 16-17 ms
        # and showed up as that moment's p99.
        gc.collect()
        gc.freeze()
        # And, as the node does: a thread that wakes (the stream reader, a
        # handler) takes the GIL within 0.5 ms instead of up to 5 ms. Three
        # pairs at --rate 10000 --pending 1000000 (2026-11-23): p99 7.87,
        # 10.54, 7.81 ms against 12.42, 11.25, 10.77 ms with the default.
        sys.setswitchinterval(0.0005)
        while not stop.wait(0.2):
            pass
        worker.stop(timeout=5)
        t.join()


# ------------------------------------------------------------------ child entry


def _progress(args: argparse.Namespace, done: int, total: int) -> None:
    if args.sweep:
        print(f"  .. {args.child}: {done} rates measured", file=sys.stderr, flush=True)


CHILDREN = {"engine": _engine_child, "grpc": _grpc_child, "asyncio": _asyncio_child,
            "heapq": _heapq_child, "apscheduler": _apscheduler_child, "floor": _floor_child}


def child_main(args: argparse.Namespace) -> int:
    if args.child == "worker":
        _worker_child(args)
        return 0
    sys.setswitchinterval(0.0005)  # as the node does (wheelsched.server.node.run), in every mode
    out_dir = Path(args.out)
    rates = [r for r in SWEEP_RATES if args.mode_min_rate <= r] if args.sweep else [args.rate]
    results = CHILDREN[args.child](args, rates, out_dir)
    (out_dir / f"{args.child}.json").write_text(json.dumps(results))
    return 0


def run_child(mode: str, args: argparse.Namespace, root: Path, sweep: bool) -> list[dict[str, Any]]:
    out_dir = root / (mode + ("-sweep" if sweep else ""))
    out_dir.mkdir()
    argv = [sys.executable, "-m", "bench.fire_latency", "--child", mode, "--out", str(out_dir),
            "--rate", str(args.rate), "--jobs", str(args.jobs), "--pending", str(args.pending),
            "--seconds", str(args.sweep_seconds), "--grace", str(args.grace),
            "--tick-us", str(args.tick_us), "--engine-log", args.engine_log, "--node-fsync", args.node_fsync,
            "--mode-min-rate", str(5_000)]
    if sweep:
        argv.append("--sweep-rate")
    with StealSampler() as steal:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"mode {mode} failed with exit code {proc.returncode}")
    results = json.loads((out_dir / f"{mode}.json").read_text())
    for res in results:
        window = res.get("window_wall_ns")
        res["steal_ms"] = steal.steal_ms(*window) if window else None
    return results


# ------------------------------------------------------------------ report


def plot(path: str, runs: dict[str, dict[str, Any]], title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        print("  (no matplotlib: --plot skipped; pip install matplotlib)", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for mode, res in runs.items():
        lat = array("q")
        lat.frombytes(Path(res["lat_path"]).read_bytes())
        xs = sorted(max(v, 1_000) / 1e6 for v in lat)  # clamp at 1 µs for the log axis
        if not xs:
            continue
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        step = max(1, len(xs) // 4000)
        ax.plot([*xs[::step], xs[-1]], [*ys[::step], 1.0], label=f"{mode} (p99 {res['p99_ms']:.3g} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("lateness (ms, log scale; values below 1 µs drawn at 1 µs)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (tests)")
    parser.add_argument("--plot", metavar="PATH", help="PNG of the lateness CDF per mode")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {','.join(MODES)}")
    parser.add_argument("--rate", type=float, default=None, help="jobs/s (default 20,000)")
    parser.add_argument("--jobs", type=int, default=None, help="N measured jobs (default 10 s at R)")
    parser.add_argument("--pending", type=int, default=None,
                        help="P jobs pending a day ahead (default 1,000,000)")
    parser.add_argument("--sweep-rate", dest="sweep", action="store_true",
                        help=f"raise R per mode until p99 > {P99_BOUND_MS:g} ms or jobs fall behind")
    parser.add_argument("--sweep-seconds", type=float, default=None, help="seconds of jobs per sweep step")
    parser.add_argument("--grace", type=float, default=10.0, help="wait this long after the last due time")
    parser.add_argument("--tick-us", type=int, default=100,
                        help="engine wheel tick (default 100, the node's)")
    parser.add_argument("--engine-log", choices=("wal", "mem"), default="wal")
    parser.add_argument("--node-fsync", default="always", help="grpc mode: the node's --fsync")
    # internal: one mode in this process
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=2.0, help=argparse.SUPPRESS)
    parser.add_argument("--mode-min-rate", type=float, default=5_000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args)

    if args.smoke:
        rate, pending, seconds, sweep_s = 2_000.0, 2_000, 0.5, 0.5
        args.grace = min(args.grace, 5.0)
    elif args.quick:
        rate, pending, seconds, sweep_s = 20_000.0, 100_000, 1.0, 1.0
        args.grace = min(args.grace, 5.0)
    else:
        rate, pending, seconds, sweep_s = 20_000.0, 1_000_000, 10.0, 3.0
    args.rate = args.rate or rate
    args.pending = pending if args.pending is None else args.pending
    args.jobs = args.jobs or max(1, int(args.rate * seconds))
    args.sweep_seconds = args.sweep_seconds or sweep_s
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        parser.error(f"unknown modes {bad}; choose from {','.join(MODES)}")
    if "apscheduler" in modes:
        try:
            import apscheduler  # noqa: F401
        except ImportError:
            print("  (apscheduler not importable: mode skipped; pip install 'apscheduler<4')",
                  file=sys.stderr)
            modes.remove("apscheduler")

    root = Path(tempfile.mkdtemp(prefix="bench-fire-", dir=os.environ.get("BENCH_DIR")))
    try:
        runs: dict[str, dict[str, Any]] = {}
        sweeps: dict[str, list[dict[str, Any]]] = {}
        bar = Progress("fire latency modes", len(modes) * (2 if args.sweep else 1))
        done = 0
        for mode in modes:
            runs[mode] = run_child(mode, args, root, sweep=False)[0]
            done += 1
            bar.update(done)
            if args.sweep:
                sweeps[mode] = run_child(mode, args, root, sweep=True)
                done += 1
                bar.update(done)
        bar.close()
        report(args, modes, runs, sweeps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def report(args: argparse.Namespace, modes: list[str], runs: dict[str, dict[str, Any]],
           sweeps: dict[str, list[dict[str, Any]]]) -> None:
    bases = [b for b in ("asyncio", "heapq", "floor") if b in runs]
    headers = ["mode", "jobs", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "early", "lost",
               "rate/s", "steal ms"] + [f"p99 vs {b}" for b in bases] + [f"p50 vs {b}" for b in bases[:1]]
    rows = []
    for mode in modes:
        r = runs[mode]
        name = mode
        if mode == "engine":
            name += " (WAL never)" if args.engine_log == "wal" else " (MemoryLog)"
        if mode == "grpc":
            name += f" (fsync {args.node_fsync})"
        if mode == "apscheduler" and r["notes"]:
            name += f" [P={r['pending']:,}]"
        rows.append([name, r["count"], r["p50_ms"], r["p90_ms"], r["p99_ms"], r["p999_ms"], r["max_ms"],
                     r["early"], r["lost"], r["achieved_rate"] or "-", r.get("steal_ms")]
                    + [ratio(r["p99_ms"], runs[b]["p99_ms"]) for b in bases]
                    + [ratio(r["p50_ms"], runs[b]["p50_ms"]) for b in bases[:1]])
    print_table(f"Fire lateness at R = {args.rate:,.0f} jobs/s, N = {args.jobs:,}, P = {args.pending:,} "
                "pending (ratios: lower is better; floor = wake-ups every 1 ms)", headers, rows)
    print("  steal ms: vCPU time the hypervisor took from this machine while the mode's jobs were due "
          "(/proc/stat, both vCPUs, 10 ms resolution); a stall of the whole VM is not the scheduler's")
    if "grpc" in runs and runs["grpc"].get("sent"):
        g = runs["grpc"]["sent"]
        print(f"  grpc, when the node dispatched (lease_deadline - lease_timeout): p50 {g['p50_ms']:.3g} ms, "
              f"p99 {g['p99_ms']:.3g} ms, p99.9 {g['p999_ms']:.3g} ms, max {g['max_ms']:.3g} ms")
    if "grpc" in runs and runs["grpc"].get("recv"):
        g = runs["grpc"]["recv"]
        print(f"  grpc, at the worker's stream read (delivery.received_at): p50 {g['p50_ms']:.3g} ms, "
              f"p99 {g['p99_ms']:.3g} ms, p99.9 {g['p999_ms']:.3g} ms, max {g['max_ms']:.3g} ms")
    for mode in modes:
        if runs[mode].get("scheduled_late"):
            print(f"  note: {mode}: {runs[mode]['scheduled_late']:,} jobs were still being scheduled "
                  "when due (their lateness includes that)")
        for note in runs[mode]["notes"]:
            print(f"  note: {mode}: {note}")

    best: dict[str, float | None] = {}
    if sweeps:
        srows = []
        for mode, steps in sweeps.items():
            ok = [s["rate"] for s in steps if passes(s)]
            best[mode] = max(ok) if ok else None
            trail = ", ".join(f"{s['rate'] / 1000:g}k:{s['p99_ms']:.3g}ms" + ("" if passes(s) else "x")
                              for s in steps if s["p99_ms"] is not None)
            srows.append([mode, best[mode] if mode != "floor" else "-", trail])
        print_table(f"Highest sustainable rate (p99 <= {P99_BOUND_MS:g} ms, nothing lost, "
                    f"achieved >= 90% of R; {args.sweep_seconds:g} s of jobs per step, P = {args.pending:,})",
                    ["mode", "max rate/s", "rate:p99 per step (x = failed)"], srows)

    targets = []
    if "engine" in runs and args.rate == 20_000 and args.pending == 1_000_000:
        e = runs["engine"]
        targets += [
            ("engine p50 <= 0.25 ms (R 20k, P 1M)", e["p50_ms"] <= 0.25, f"{e['p50_ms']:.3f} ms"),
            ("engine p99 <= 1.0 ms (R 20k, P 1M)", e["p99_ms"] <= 1.0, f"{e['p99_ms']:.3f} ms"),
            ("engine zero early fires, zero lost", e["early"] == 0 and e["lost"] == 0,
             f"early {e['early']}, lost {e['lost']}"),
        ]
        if "asyncio" in runs:
            a = runs["asyncio"]
            targets.append(("engine ahead of asyncio (p50 and p99)",
                            e["p50_ms"] < a["p50_ms"] and e["p99_ms"] < a["p99_ms"],
                            f"p50 {e['p50_ms']:.3f} vs {a['p50_ms']:.3f}, p99 {e['p99_ms']:.3f} vs "
                            f"{a['p99_ms']:.3f} ms"))
    if "grpc" in runs and args.rate == 10_000 and args.pending == 1_000_000:
        g = runs["grpc"]
        targets += [("grpc p99 <= 5 ms (R 10k, P 1M)", g["p99_ms"] <= 5.0, f"{g['p99_ms']:.3f} ms"),
                    ("grpc zero lost, zero early", g["lost"] == 0 and g["early"] == 0,
                     f"lost {g['lost']}, early {g['early']}")]
    if best.get("engine") is not None or "engine" in sweeps:
        targets.append(("engine sustains >= 100,000 fires/s", (best.get("engine") or 0) >= 100_000,
                        f"{best.get('engine') or 0:,.0f}/s"))
    if "grpc" in sweeps:
        targets.append(("grpc sustains >= 30,000 fires/s", (best.get("grpc") or 0) >= 30_000,
                        f"{best.get('grpc') or 0:,.0f}/s"))
    if targets:
        print("\nTargets")
        for name, ok, figure in targets:
            print(f"  {'MET   ' if ok else 'MISSED'}  {name:<40} {figure}")
    else:
        print("\n  (targets are checked at R = 20,000 (engine) / 10,000 (grpc) with P = 1,000,000)")

    if args.plot:
        plot(args.plot, runs, f"Fire lateness CDF, R = {args.rate:,.0f}/s, P = {args.pending:,}")
    strip = lambda r: {k: v for k, v in r.items() if k != "lat_path"}  # noqa: E731
    write_json(args.json, {
        "bench": "fire_latency",
        "config": {"rate": args.rate, "jobs": args.jobs, "pending": args.pending, "quick": args.quick,
                   "smoke": args.smoke, "tick_us": args.tick_us, "engine_log": args.engine_log,
                   "node_fsync": args.node_fsync, "sweep": args.sweep, "sweep_seconds": args.sweep_seconds,
                   "p99_bound_ms": P99_BOUND_MS},
        "modes": {m: strip(r) for m, r in runs.items()},
        "sweep": {m: {"max_rate": best.get(m), "steps": [strip(s) for s in steps]}
                  for m, steps in sweeps.items()},
        "targets": {name: ok for name, ok, _ in targets},
    })


if __name__ == "__main__":
    sys.exit(main())
