"""Durable scheduling throughput through the client against a real node,
next to a plain gRPC echo on the same stack, in the same run (issue #4).

    .venv/bin/python -m bench.schedule [--quick] [--smoke] [--json PATH] [--repeat N]

A ``wheelsched serve`` subprocess (fsync ``always``, 16 shards, a fresh temp
data dir) and a ``bench.echo`` subprocess (grpc.aio server, one generic unary
handler that returns its request bytes) run side by side; this process is
the client. Every case counts calls completed in a fixed window after a
warm-up (so start-up and tail effects do not count), and echo and schedule
cases alternate, ``--repeat`` rounds; the table shows the median round and
the spread (min-max) across rounds.

Cases (jobs are one-shot, due in an hour, 64-byte payload, no id: the client
generates one per job, as in production):

* unary, 1 caller: ``Client.schedule`` in a loop on one thread;
  echo: a ``grpc.Channel.unary_unary`` callable (same channel options, from
  ``wheelsched.client._channel.open_channel``) sending the serialized
  ``ScheduleJobRequest`` bytes of such a job.
* unary, 32 threads: 32 threads sharing one ``Client`` (it is thread-safe) /
  one echo channel.
* unary, 32 asyncio: 32 tasks on one ``grpc.aio`` channel calling the
  generated ``SchedulerStub.ScheduleJob`` with a prebuilt job proto (fresh id
  per call) / the echo method.
* batch: ``Client.schedule_many(specs, chunk=1000)`` from 1 thread and from
  4 threads; echo: the serialized 1,000-job ``BatchScheduleJobsRequest``
  bytes (the transport's ceiling for that message size), in jobs/s.

``cpu/call`` columns are the server process's CPU time (user+sys, from
/proc) per call in the window: where the node spends more than echo does.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from bench._common import Progress, base_parser, print_table, ratio, write_json
from bench._procs import ServerProcess, start_echo, start_node
from bench.echo import METHOD
from wheelsched.client import Client, JobSpec
from wheelsched.client._channel import DEFAULT_OPTIONS, open_channel
from wheelsched.v1 import scheduler_pb2, scheduler_pb2_grpc

QUEUE = "bench"
PAYLOAD = b"p" * 64
DELAY_S = 3600  # never fires during the run
BATCH = 1000
TARGET_UNARY_RATIO = 0.8
TARGET_BATCH_RATE = 100_000
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a process, from /proc (0 where there is none)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


class Window:
    """Counts calls made by callers between ``warmup`` and ``warmup + seconds``."""

    def __init__(self, warmup: float, seconds: float) -> None:
        self.warmup = warmup
        self.seconds = seconds
        self.stop = threading.Event()


def run_threads(n: int, make_call: Callable[[], Callable[[], int]], window: Window,
                server: ServerProcess) -> dict[str, float]:
    """``n`` threads each calling ``make_call()()`` (returns items done per
    call) until stopped; returns items/s and server CPU per item over the window."""
    counts = [0] * n
    errors: list[BaseException] = []
    ready = threading.Barrier(n + 1)

    def caller(i: int) -> None:
        call = make_call()
        ready.wait()
        try:
            while not window.stop.is_set():
                counts[i] += call()
        except BaseException as exc:
            errors.append(exc)
            window.stop.set()

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    ready.wait()
    time.sleep(window.warmup)
    c0, cpu0, t0 = sum(counts), cpu_seconds(server.pid), time.perf_counter()
    time.sleep(window.seconds)
    c1, cpu1, t1 = sum(counts), cpu_seconds(server.pid), time.perf_counter()
    window.stop.set()
    for t in threads:
        t.join(30)
    if errors:
        raise errors[0]
    done = c1 - c0
    return {"rate": done / (t1 - t0), "server_cpu_us": 1e6 * (cpu1 - cpu0) / max(done, 1), "items": done}


def run_asyncio(n: int, make_call: Callable[[grpc.aio.Channel], Callable[[], Any]], window: Window,
                server: ServerProcess) -> dict[str, float]:
    """``n`` asyncio tasks on one aio channel, each awaiting ``make_call(channel)()`` in a loop."""

    async def main() -> dict[str, float]:
        counts = [0] * n
        stop = False
        channel = grpc.aio.insecure_channel(server.target, options=list(dict(DEFAULT_OPTIONS).items()))

        async def caller(i: int) -> None:
            call = make_call(channel)
            while not stop:
                await call()
                counts[i] += 1

        try:
            tasks = [asyncio.create_task(caller(i)) for i in range(n)]
            await asyncio.sleep(window.warmup)
            c0, cpu0, t0 = sum(counts), cpu_seconds(server.pid), time.perf_counter()
            await asyncio.sleep(window.seconds)
            c1, cpu1, t1 = sum(counts), cpu_seconds(server.pid), time.perf_counter()
            stop = True
            await asyncio.gather(*tasks)
        finally:
            await channel.close()
        done = c1 - c0
        return {"rate": done / (t1 - t0), "server_cpu_us": 1e6 * (cpu1 - cpu0) / max(done, 1),
                "items": done}

    return asyncio.run(main())


# ---------------------------------------------------------------- the cases

def job_spec() -> JobSpec:
    return JobSpec(queue=QUEUE, payload=PAYLOAD, delay=DELAY_S)


def schedule_request_bytes() -> bytes:
    job = job_spec().to_proto()
    job.id = uuid.uuid4().hex
    return scheduler_pb2.ScheduleJobRequest(job=job).SerializeToString()


def batch_request_bytes() -> bytes:
    protos = []
    for _ in range(BATCH):
        p = job_spec().to_proto()
        p.id = uuid.uuid4().hex
        protos.append(p)
    return scheduler_pb2.BatchScheduleJobsRequest(jobs=protos).SerializeToString()


class Cases:
    """The callables each case's callers run; one shared channel/Client per case."""

    def __init__(self, node: ServerProcess, echo: ServerProcess) -> None:
        self.node, self.echo = node, echo
        self.unary_bytes = schedule_request_bytes()
        self.batch_bytes = batch_request_bytes()

    # -- sync, threads
    def echo_sync(self, threads: int, window: Window, body: bytes, items: int = 1) -> dict[str, float]:
        channel = open_channel(self.echo.target)
        try:
            method = channel.unary_unary(METHOD)

            def make() -> Callable[[], int]:
                def call() -> int:
                    method(body, timeout=30)
                    return items
                return call

            return run_threads(threads, make, window, self.echo)
        finally:
            channel.close()

    def schedule_sync(self, threads: int, window: Window) -> dict[str, float]:
        with Client(self.node.target, timeout=30) as client:
            def make() -> Callable[[], int]:
                schedule = client.schedule

                def call() -> int:
                    schedule(QUEUE, PAYLOAD, delay=DELAY_S)
                    return 1
                return call

            return run_threads(threads, make, window, self.node)

    def schedule_many_sync(self, threads: int, window: Window) -> dict[str, float]:
        specs = [job_spec() for _ in range(BATCH)]  # no ids: the client generates fresh ones per call
        with Client(self.node.target, timeout=60) as client:
            def make() -> Callable[[], int]:
                def call() -> int:
                    return len(client.schedule_many(specs, chunk=BATCH))
                return call

            return run_threads(threads, make, window, self.node)

    # -- asyncio stubs
    def echo_async(self, tasks: int, window: Window) -> dict[str, float]:
        body = self.unary_bytes

        def make(channel: grpc.aio.Channel) -> Callable[[], Any]:
            method = channel.unary_unary(METHOD)
            return lambda: method(body, timeout=30)

        return run_asyncio(tasks, make, window, self.echo)

    def schedule_async(self, tasks: int, window: Window) -> dict[str, float]:
        template = job_spec().to_proto()

        def make(channel: grpc.aio.Channel) -> Callable[[], Any]:
            schedule = scheduler_pb2_grpc.SchedulerStub(channel).ScheduleJob

            def call() -> Any:
                request = scheduler_pb2.ScheduleJobRequest()
                request.job.CopyFrom(template)
                request.job.id = uuid.uuid4().hex
                return schedule(request, timeout=30)
            return call

        return run_asyncio(tasks, make, window, self.node)


def measure(cases: Cases, window: Window, repeat: int,
            progress: Progress) -> dict[str, list[dict[str, float]]]:
    plan: list[tuple[str, Callable[[], dict[str, float]]]] = [
        ("echo_1", lambda: cases.echo_sync(1, window, cases.unary_bytes)),
        ("schedule_1", lambda: cases.schedule_sync(1, window)),
        ("echo_32t", lambda: cases.echo_sync(32, window, cases.unary_bytes)),
        ("schedule_32t", lambda: cases.schedule_sync(32, window)),
        ("echo_32a", lambda: cases.echo_async(32, window)),
        ("schedule_32a", lambda: cases.schedule_async(32, window)),
        ("echo_batch_1", lambda: cases.echo_sync(1, window, cases.batch_bytes, BATCH)),
        ("schedule_many_1", lambda: cases.schedule_many_sync(1, window)),
        ("echo_batch_4t", lambda: cases.echo_sync(4, window, cases.batch_bytes, BATCH)),
        ("schedule_many_4t", lambda: cases.schedule_many_sync(4, window)),
    ]
    out: dict[str, list[dict[str, float]]] = {name: [] for name, _ in plan}
    step = 0
    for _ in range(repeat):
        for name, fn in plan:
            window.stop = threading.Event()
            out[name].append(fn())
            step += 1
            progress.update(step)
    progress.close()
    return out


def summarize(runs: list[dict[str, float]]) -> dict[str, Any]:
    rates = [r["rate"] for r in runs]
    med = statistics.median(rates)
    cpu = statistics.median(r["server_cpu_us"] for r in runs)
    return {"rate": med, "min": min(rates), "max": max(rates), "rates": rates, "server_cpu_us": cpu}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny windows, one round (tests)")
    parser.add_argument("--repeat", type=int, default=None, help="rounds of every case (default 3; quick 1)")
    parser.add_argument("--seconds", type=float, default=None, help="window per case (default 3; quick 1.5)")
    args = parser.parse_args(argv)
    if args.smoke:
        warmup, seconds, repeat = 0.2, 0.3, 1
    elif args.quick:
        warmup, seconds, repeat = 0.3, 1.5, 1
    else:
        warmup, seconds, repeat = 0.5, 3.0, 3
    seconds = args.seconds or seconds
    repeat = args.repeat or repeat

    root = Path(tempfile.mkdtemp(prefix="bench-schedule-", dir=os.environ.get("BENCH_DIR")))
    try:
        with start_node(root, fsync="always") as node, start_echo(root) as echo:
            cases = Cases(node, echo)
            bar = Progress("schedule vs echo", 10 * repeat)
            raw = measure(cases, Window(warmup, seconds), repeat, bar)
            with Client(node.target) as client:
                status = client.status()
            pending = sum(s.pending for s in status.shards)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    s = {name: summarize(runs) for name, runs in raw.items()}
    scheduled = sum(r["items"] for name, runs in raw.items() if name.startswith("schedule") for r in runs)

    def row(label: str, name: str, base: str | None) -> list[Any]:
        r = s[name]
        b = s[base] if base else None
        spread = f"{r['min']:,.0f}-{r['max']:,.0f}" if repeat > 1 else "-"
        return [label, r["rate"], spread, ratio(r["rate"], b["rate"]) if b else "1.00x",
                round(r["server_cpu_us"]), round(b["server_cpu_us"]) if b else "-"]

    rows = [
        ["-- unary, 1 sync caller", "", "", "", "", ""],
        row("echo", "echo_1", None),
        row("Client.schedule", "schedule_1", "echo_1"),
        ["-- unary, 32 threads, one Client/channel", "", "", "", "", ""],
        row("echo", "echo_32t", None),
        row("Client.schedule", "schedule_32t", "echo_32t"),
        ["-- unary, 32 asyncio tasks, one aio channel", "", "", "", "", ""],
        row("echo", "echo_32a", None),
        row("SchedulerStub.ScheduleJob (aio)", "schedule_32a", "echo_32a"),
        ["-- batches of 1,000 jobs (jobs/s)", "", "", "", "", ""],
        row("echo of the 1,000-job request, 1 thread", "echo_batch_1", None),
        row("Client.schedule_many, 1 thread", "schedule_many_1", "echo_batch_1"),
        row("echo of the 1,000-job request, 4 threads", "echo_batch_4t", None),
        row("Client.schedule_many, 4 threads", "schedule_many_4t", "echo_batch_4t"),
    ]
    print_table(f"Durable scheduling through the client (fsync always, 16 shards), calls/s or jobs/s; "
                f"median of {repeat} x {seconds:g} s",
                ["case", "per s", "spread", "vs echo", "srv cpu us/item", "echo cpu us/item"], rows)

    best_batch = max(s["schedule_many_1"]["rate"], s["schedule_many_4t"]["rate"])
    targets = [
        ("unary schedule, 1 caller >= 80% of echo",
         s["schedule_1"]["rate"] >= TARGET_UNARY_RATIO * s["echo_1"]["rate"],
         f"{s['schedule_1']['rate']:,.0f}/s = {s['schedule_1']['rate'] / s['echo_1']['rate']:.0%} "
         f"of {s['echo_1']['rate']:,.0f}/s"),
        ("unary schedule, 32 threads >= 80% of echo",
         s["schedule_32t"]["rate"] >= TARGET_UNARY_RATIO * s["echo_32t"]["rate"],
         f"{s['schedule_32t']['rate']:,.0f}/s = {s['schedule_32t']['rate'] / s['echo_32t']['rate']:.0%} "
         f"of {s['echo_32t']['rate']:,.0f}/s"),
        ("unary schedule, 32 asyncio >= 80% of echo",
         s["schedule_32a"]["rate"] >= TARGET_UNARY_RATIO * s["echo_32a"]["rate"],
         f"{s['schedule_32a']['rate']:,.0f}/s = {s['schedule_32a']['rate'] / s['echo_32a']['rate']:.0%} "
         f"of {s['echo_32a']['rate']:,.0f}/s"),
        ("batches >= 100,000 jobs/s acked after fsync", best_batch >= TARGET_BATCH_RATE,
         f"{best_batch:,.0f} jobs/s (best of 1 and 4 threads)"),
    ]
    print("\nTargets")
    for name, ok, figure in targets:
        print(f"  {'MET   ' if ok else 'MISSED'}  {name:<46} {figure}")
    print(f"\n  node held {pending:,} pending jobs at the end ({scheduled:,} scheduled in the windows)")
    write_json(args.json, {
        "bench": "schedule",
        "config": {"quick": args.quick, "smoke": args.smoke, "repeat": repeat, "seconds": seconds,
                   "warmup": warmup, "fsync": "always", "shards": 16, "batch": BATCH,
                   "payload_bytes": len(PAYLOAD)},
        "results": s,
        "pending_at_end": pending,
        "targets": {name: ok for name, ok, _ in targets},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
