"""``wheelsched demo``: a standalone node, a client and a worker, end to end.

Starts a real node (a ``wheelsched serve`` subprocess on a free loopback
port, data in a temp directory), then shows what the scheduler promises:
jobs fire on time (lateness measured per job), a failing job is retried with
backoff, a cron job keeps firing, a cancelled job never runs, higher
priority goes first — and after a SIGKILL of the node, every acknowledged
job is still there and fires.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a node, a client and a worker end to end", description=__doc__)
    p.add_argument("--jobs", type=int, default=2000, help="one-shot jobs to schedule (default 2000)")
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    p.set_defaults(func=main)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(args: argparse.Namespace) -> int:
    from wheelsched.client import Client, Worker
    from wheelsched.server.process import NodeProcess

    say = print
    work = Path(tempfile.mkdtemp(prefix="wheelsched-demo-"))
    node = NodeProcess(work, {"shards": 8, "fsync": "always"})
    say(f"starting a node (data in {work}) ...")
    node.start()
    say(f"node serving on {node.target}\n")

    lock = threading.Lock()
    received: dict[str, list] = {}
    flaky_attempts = []
    prio_order = []

    def handler(d) -> None:
        with lock:
            received.setdefault(d.job_id, []).append(d)
        if d.job_id == "flaky":
            flaky_attempts.append(d.attempt)
            if d.attempt < 3:
                raise RuntimeError(f"simulated failure on attempt {d.attempt}")

    client = Client(node.target)
    worker = Worker(node.target, ["demo", "cron"], handler, concurrency=8, max_in_flight=256,
                    reconnect_initial=0.05, reconnect_max=0.5)
    # One job at a time, so the order of delivery is the order of handling.
    prio_worker = Worker(node.target, ["prio"], lambda d: prio_order.append(d.job_id), concurrency=1,
                         max_in_flight=1)
    try:
        t0 = time.time()
        specs = [{"queue": "demo", "id": f"job-{i}", "payload": f"hello {i}".encode(),
                  "due": t0 + 1.0 + 2.0 * i / args.jobs} for i in range(args.jobs)]
        client.schedule_many(specs)
        say(f"scheduled {args.jobs} one-shot jobs due over 2 s ({time.time() - t0:.2f} s, durable)")
        client.schedule(queue="demo", id="flaky", delay=0.5, max_attempts=5, min_backoff=0.2, jitter=0)
        say("scheduled 'flaky': fails twice, succeeds on attempt 3 (backoff 0.2 s, then 0.4 s)")
        client.schedule(queue="cron", id="every-2s", cron="*/2 * * * * *", tz="Europe/Paris")
        say("scheduled 'every-2s': cron */2 * * * * * in Europe/Paris")
        client.schedule(queue="demo", id="cancel-me", delay=1.5)
        client.cancel("cancel-me")
        say("scheduled and cancelled 'cancel-me'")
        due = t0 + 1.2
        client.schedule_many([{"queue": "prio", "id": f"prio-{p}", "priority": p, "due": due}
                              for p in (1, 7, 3)])
        say("scheduled prio-1, prio-7, prio-3, all due at the same instant\n")
        worker.start()
        prio_worker.start()
        time.sleep(4.0)

        late = [(ds[0].received_at.timestamp() - ds[0].due_time.timestamp()) * 1000
                for jid, ds in received.items() if jid.startswith("job-")]
        say(f"one-shot jobs delivered: {len(late)}/{args.jobs}; early: {sum(1 for x in late if x < 0)}")
        if late:
            say(f"lateness (receipt by the worker - due time): p50 {_pct(late, .5):.2f} ms, "
                f"p99 {_pct(late, .99):.2f} ms, max {max(late):.2f} ms")
        say(f"'flaky' attempts seen: {flaky_attempts} -> {client.get('flaky').state}")
        say(f"'every-2s' executions so far: {client.get('every-2s').executions}")
        say(f"'cancel-me' delivered: {'cancel-me' in received} -> {client.get('cancel-me').state}")
        say(f"priority order of delivery: {prio_order}\n")

        # Crash: acknowledged jobs survive a SIGKILL.
        crash_due = time.time() + 2.0
        client.schedule_many([{"queue": "demo", "id": f"crash-{i}", "due": crash_due} for i in range(500)])
        say("scheduled 500 jobs due in 2 s, then SIGKILL the node ...")
        node.kill()
        started = time.time()
        node.start()
        say(f"node back and serving in {time.time() - started:.2f} s")
        time.sleep(max(0.0, crash_due - time.time()) + 1.5)
        crashed = [f"crash-{i}" for i in range(500)]
        fired = sum(1 for jid in crashed if jid in received)
        say(f"after the crash: {fired}/500 delivered; "
            f"states: {sorted({client.get(j).state for j in crashed})}")
        ok = (fired == 500 and len(late) == args.jobs and "cancel-me" not in received
              and prio_order == ["prio-7", "prio-3", "prio-1"] and flaky_attempts == [1, 2, 3])
    finally:
        worker.stop(timeout=5)
        prio_worker.stop(timeout=5)
        client.close()
        code = node.terminate()
        say(f"\nnode stopped gracefully (exit code {code})")
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    say("demo OK" if ok else "demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(["demo", *sys.argv[1:]])
    sys.exit(ns.func(ns))
