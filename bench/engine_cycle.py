"""What one job costs the engine's event loop: fire + dispatch, and ack.

The engine on a manual clock (no threads, no network): N jobs are due at
once, one tick fires and dispatches them all to a subscriber, then their
acks are applied in batches of 1,000. Prints µs per job for each step, with
the in-memory log and the real write-ahead log (fsync ``never``), next to
``heapq`` push+pop of the same N entries as a baseline for "Python work per
job". The sustainable fire rate of a node is bounded by 1 / (fire + ack).
Then what a status call's lag costs with 10 N jobs ready and no worker.

With ``--instructions``, instead: instructions per job, counted by
valgrind's callgrind (which counts, so the figure is the same on a busy
machine as on a quiet one, for the same code and inputs; times here are not).
Each flow runs twice, at N and 3 N jobs, in child processes, and the
difference over 2 N is the cost per job without start-up and set-up:

* ``memory``, ``wal``: 3 N jobs scheduled, then N of them fired, dispatched
  and acked 1,000 at a time over 16 shards, with each kind of log;
* ``spaced``: the same with jobs due 100 µs apart, one tick per job and
  acks in tens, as a node runs at 10,000 jobs/s (write-ahead log);
* ``tens``: jobs due 10 µs apart, ten per tick, each tick's acked in one
  call, as the engine mode of ``bench.fire_latency`` runs at 100,000/s;
* ``worker``: the client's side, ``Worker`` receiving the node's messages
  of 10 dispatches, running a no-op handler and acking (no network);
* ``heapq``: push+pop of N entries, the baseline.

Takes about ten minutes.

    python -m bench.engine_cycle [--quick] [--json PATH] [--instructions]
"""

from __future__ import annotations

import argparse
import gc
import heapq
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import base_parser, print_table, write_json
from wheelsched.engine import US, AckItem, Engine, EngineConfig, JobRequest, Limits
from wheelsched.engine.memlog import MemoryLog
from wheelsched.wal import WALOptions, WriteAheadLog
from wheelsched.wheel import TimingWheel


def engine_with_jobs(log_kind: str, count: int, due_from_us: int, max_in_flight: int = 10_000,
                     spacing_us: int = 1) -> tuple[Engine, list[int], Path]:
    """An engine over 16 shards on a manual clock (``now[0]``), its logs in
    memory or write-ahead logs with fsync ``never`` under the returned
    directory, holding ``count`` jobs due ``spacing_us`` apart from
    ``due_from_us`` on."""
    root = Path(tempfile.mkdtemp(prefix="ws-cycle-"))
    now = [1_800_000_000 * US]

    def open_log(i: int):
        if log_kind == "memory":
            return MemoryLog()
        return WriteAheadLog(root / f"s{i}", WALOptions(fsync="never"), meta={"shard": i})

    limits = Limits(max_in_flight=max_in_flight, max_batch_jobs=10_000)
    engine = Engine(EngineConfig(shard_count=16, limits=limits),
                    clock=lambda: now[0], open_log=open_log, wheel_factory=TimingWheel)
    engine.recover()
    for lo in range(0, count, 10_000):
        engine.schedule([JobRequest(queue="q", id=f"job-{i}", payload=b"x" * 32,
                                    due_us=now[0] + due_from_us + i * spacing_us)
                         for i in range(lo, min(count, lo + 10_000))])
    gc.collect()
    return engine, now, root


def cycle(n: int, log_kind: str) -> dict[str, float]:
    engine, now, root = engine_with_jobs(log_kind, n, 1000, max_in_flight=n)
    got: list = []
    engine.subscribe(["q"], n, got.extend)
    now[0] += 1000 + n
    t = time.perf_counter()
    engine.tick()
    fire = time.perf_counter() - t
    assert len(got) == n, len(got)
    items = [AckItem(d.job.id, d.job.attempt, d.epoch, True) for d in got]
    t = time.perf_counter()
    for lo in range(0, n, 1000):
        engine.ack(items[lo:lo + 1000])
    ack = time.perf_counter() - t
    engine.close()
    shutil.rmtree(root, ignore_errors=True)
    return {"fire_dispatch_us": fire / n * 1e6, "ack_us": ack / n * 1e6}


def status_lag(n: int) -> dict[str, float]:
    """What a status call's lag costs the loop with N jobs ready and no
    worker (a node far behind): ``Engine.backlog`` over all shards, the
    first call after they fired (it files them into its index) and a later
    one, against the baseline of scanning every ready job for the oldest."""
    engine, now, root = engine_with_jobs("memory", n, 1000)
    now[0] += 1000 + n
    engine.tick()
    out = {}
    for name in ("first_ms", "later_ms"):
        t = time.perf_counter()
        lags = [engine.backlog(shard, now[0]) for shard in engine.shards]
        out[name] = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    scanned = [min(shard.jobs[shard.by_num[num]].next_us for num in shard.ready) for shard in engine.shards]
    out["scan_ms"] = (time.perf_counter() - t) * 1e3
    assert [lag for _, lag in lags] == [now[0] - oldest for oldest in scanned]
    assert sum(ready for ready, _ in lags) == n
    engine.close()
    shutil.rmtree(root, ignore_errors=True)
    return out


def flow(n: int, total: int, log_kind: str) -> None:
    """The steady flow ``--instructions`` counts: ``total`` jobs scheduled
    (the same in both runs, so their cost cancels out), then the first N
    fired, dispatched and acked 1,000 at a time."""
    # due from 1,001 µs on: each 1 ms tick fires exactly 1,000
    engine, now, root = engine_with_jobs(log_kind, total, 1001)
    gc.freeze()
    got: list = []
    engine.subscribe(["q"], 10_000, got.extend)
    base = now[0]
    for done in range(0, n, 1000):
        now[0] = base + 2000 + done
        engine.tick()
        items = [AckItem(d.job.id, d.job.attempt, d.epoch, True) for d in got]
        assert len(items) == 1000, len(items)
        got.clear()
        engine.ack(items)
    engine.close()
    shutil.rmtree(root, ignore_errors=True)


def spaced_flow(n: int, total: int, per_tick: int = 1) -> None:
    """The flow as a node sees it at 10,000 jobs/s: jobs due 100 µs apart
    (one wheel tick), each fired by a tick of its own, after which the node
    asks for its next wake-up; acks in batches of 10. Write-ahead logs.
    With ``per_tick`` = 10, ten jobs per tick (100,000 jobs/s), each
    tick's ten acked together."""
    tick_us = EngineConfig().tick_us
    spacing = tick_us // per_tick
    # job i is due at base - tick_us + spacing * (i + 1): tick k (at base +
    # k * tick_us) fires jobs k * per_tick .. (k + 1) * per_tick - 1
    engine, now, root = engine_with_jobs("wal", total, 1000 + spacing, spacing_us=spacing)
    gc.freeze()
    got: list = []
    engine.subscribe(["q"], 10_000, got.extend)
    base = now[0] + 1000 + tick_us
    for done in range(n // per_tick):
        now[0] = base + done * tick_us
        engine.tick()
        engine.next_wakeup_us()
        if len(got) == 10:
            engine.ack([AckItem(d.job.id, d.job.attempt, d.epoch, True) for d in got])
            got.clear()
    assert not got and engine.counters["dispatched"] == n, engine.counters["dispatched"]
    engine.close()
    shutil.rmtree(root, ignore_errors=True)


def worker_flow(n: int, total: int) -> None:
    """What a Worker does per job besides waiting and the network: decode
    the node's messages (10 dispatches each, as at 10,000 jobs/s), take the
    jobs in, run a no-op handler and buffer its ack as a handler thread
    does, send the acks and take the node's confirmation. Messages for
    ``total`` jobs are built first (the same in both runs); the first N are
    taken."""
    from wheelsched.client.worker import Worker
    from wheelsched.v1 import worker_pb2

    worker = Worker("127.0.0.1:1", ["q"], lambda d: None, max_in_flight=10_000)
    due_us = 1_800_000_000 * US
    sent, confirmations = [], []
    for lo in range(0, total, 10):
        msg, done = worker_pb2.StreamJobsResponse(), worker_pb2.StreamJobsResponse()
        for i in range(lo, lo + 10):
            d = msg.dispatches.add(job_id=f"job-{i}", queue="q", payload=b"x" * 32, attempt=1,
                                   epoch=1, shard=i % 16)
            d.due_time.FromMicroseconds(due_us + i)
            d.lease_deadline.FromMicroseconds(due_us + i + 30 * 10**6)
            d.lease_timeout.FromSeconds(30)
            done.ack_results.add(job_id=d.job_id, attempt=1)
        sent.append(msg.SerializeToString())
        confirmations.append(done.SerializeToString())
    gc.freeze()
    decode = worker_pb2.StreamJobsResponse.FromString
    work, lock = worker._work, worker._lock
    for k in range(n // 10):
        worker._on_dispatches(decode(sent[k]).dispatches)
        while work:
            running = work.popleft()
            item = worker._run_handler(running)
            with lock:
                worker._record_ack(running, item)
        acks, worker._acks = worker._acks, []  # what the request generator does
        for a in acks:
            worker._unconfirmed[(a.job_id, a.attempt)] = a
        worker_pb2.StreamJobsRequest(acks=acks).SerializeToString()
        worker._on_results(decode(confirmations[k]))
    assert worker.succeeded == n // 10 * 10 and not worker._unconfirmed and not worker._running


def heapq_flow(n: int) -> None:
    """The baseline under the same counting: N entries pushed and popped."""
    heap: list = []
    for i in range(n):
        heapq.heappush(heap, (1000 + i, i))
    while heap:
        heapq.heappop(heap)


def _counted(what: str, n: int, total: int) -> int:
    """Instructions callgrind counts for one child run of ``what`` at ``n``."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
           sys.executable, "-m", "bench.engine_cycle", "--child", what, str(n), str(total)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run of {what} failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def instructions(n: int) -> dict[str, float]:
    """Instructions per job (per entry for heapq): the difference between
    runs at N and 3 N, over 2 N."""
    out = {}
    for what in ("memory", "wal", "spaced", "tens", "worker", "heapq"):
        print(f"  .. counting {what} ({n:,} and {3 * n:,})", file=sys.stderr, flush=True)
        out[what] = (_counted(what, 3 * n, 3 * n) - _counted(what, n, 3 * n)) / (2 * n)
    return out


def heapq_us(n: int) -> float:
    entries = [(1000 + i, i) for i in range(n)]
    heap: list = []
    t = time.perf_counter()
    for e in entries:
        heapq.heappush(heap, e)
    while heap:
        heapq.heappop(heap)
    return (time.perf_counter() - t) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny size (tests)")
    p.add_argument("--instructions", action="store_true",
                   help="count instructions per job with callgrind instead of timing")
    p.add_argument("--child", nargs=3, metavar=("WHAT", "N", "TOTAL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        what, count, total = args.child[0], int(args.child[1]), int(args.child[2])
        if what == "heapq":
            heapq_flow(count)
        elif what == "spaced":
            spaced_flow(count, total)
        elif what == "tens":
            spaced_flow(count, total, per_tick=10)
        elif what == "worker":
            worker_flow(count, total)
        else:
            flow(count, total, what)
        return 0
    if args.instructions:
        return main_instructions(args)
    n = 2_000 if args.smoke else 20_000 if args.quick else 100_000
    base = heapq_us(n)
    rows, out = [], {}
    for kind in ("memory", "wal"):
        r = cycle(n, kind)
        total = r["fire_dispatch_us"] + r["ack_us"]
        r["sustainable_per_s"] = 1e6 / total
        out[kind] = r
        rows.append([f"engine, {kind} log", r["fire_dispatch_us"], r["ack_us"], total,
                     f"{total / base:.1f}x", r["sustainable_per_s"]])
    rows.append(["heapq push+pop", None, None, base, "1.0x", 1e6 / base])
    print_table(f"Engine cost per job, N = {n:,} (µs; one core)",
                ["case", "fire+dispatch", "ack", "total", "vs heapq", "jobs/s bound"], rows)
    lag = status_lag(n * 10)
    print_table(f"\nStatus lag over 16 shards with {n * 10:,} jobs ready and no worker (ms of the loop)",
                ["case", "ms"], [["Engine.backlog, first call after they fired", lag["first_ms"]],
                                 ["Engine.backlog, a later call", lag["later_ms"]],
                                 ["baseline: scan every ready job", lag["scan_ms"]]])
    write_json(args.json, {"benchmark": "engine_cycle", "n": n, "results": out, "heapq_us": base,
                           "status_lag": {"ready": n * 10, **lag}})
    return 0


def main_instructions(args: argparse.Namespace) -> int:
    if shutil.which("valgrind") is None:
        print("--instructions needs valgrind (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    n = 1_000 if args.smoke else 2_000 if args.quick else 10_000
    counts = instructions(n)
    base = counts["heapq"]
    rows = [[f"engine, {kind} log", counts[kind], f"{counts[kind] / base:.0f}x"]
            for kind in ("memory", "wal")]
    rows.append(["engine, write-ahead log, one job per tick (jobs 100 µs apart)", counts["spaced"],
                 f"{counts['spaced'] / base:.0f}x"])
    rows.append(["engine, write-ahead log, ten jobs per tick (jobs 10 µs apart)", counts["tens"],
                 f"{counts['tens'] / base:.0f}x"])
    rows.append(["worker (client): receive, no-op handler, ack", counts["worker"],
                 f"{counts['worker'] / base:.0f}x"])
    rows.append(["heapq push+pop", base, "1x"])
    print_table(f"Instructions per job (callgrind), fire + dispatch + ack, N = {n:,} over 16 shards "
                f"(1,000 jobs per tick unless said)", ["case", "instructions", "vs heapq"], rows)
    write_json(args.json, {"benchmark": "engine_cycle", "mode": "instructions", "n": n,
                           "instructions_per_job": counts})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
