"""The simulated crash users will run first.

A real node (``wheelsched serve``, fsync ``always``) gets N jobs through the
client — mostly one-shot jobs due after the crash, some cron jobs, some
cancelled, and a few held by a worker at the moment of the crash — and is
SIGKILLed while the load is still running. It is restarted on the same data
directory, and the run reports:

- time from the restart to SERVING (the node prints its listening line only
  after recovery), and the node's own replay time and record count;
- log and snapshot bytes on disk;
- a verification of every acknowledged job: present, same queue and
  schedule, and the right state (lost = 0, resurrected cancels = 0);
- that they all fire: a worker takes every acknowledged one-shot job, none
  that was cancelled, and every cron job runs at least once.

    python -m bench.crash_replay [--quick] [--jobs N] [--json PATH]
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench._common import Progress, base_parser, print_table, write_json
from wheelsched.client import Client, Worker
from wheelsched.errors import WheelschedError
from wheelsched.server.process import NodeProcess

CHUNK = 1000
CRON_EXPR = "*/5 * * * * *"


def _dir_bytes(root: Path, suffix: str) -> int:
    return sum(p.stat().st_size for p in root.rglob(f"*{suffix}") if p.is_file())


def run(args) -> dict[str, Any]:
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="wheelsched-crash-"))
    node = NodeProcess(work, {"shards": args.shards, "fsync": "always"})
    node.start()
    client = Client(node.target, timeout=30)
    n = args.jobs
    # Everything is due after the crash: the load takes ~n/25k s here.
    fire_start = time.time() + n / 25_000 + 15
    acked: dict[str, tuple[str, float | None]] = {}  # id -> (queue, due or None for cron)
    cancelled: set[str] = set()
    lock = threading.Lock()
    next_chunk = iter(range(0, n, CHUNK))
    stop = threading.Event()
    failures = [0]

    # A worker holds a few jobs when the node dies.
    held = threading.Event()
    holder = Worker(node.target, ["held"], lambda d: held.wait(60), concurrency=args.inflight,
                    max_in_flight=args.inflight, reconnect_initial=0.05, reconnect_max=0.5)
    client.schedule_many([{"queue": "held", "id": f"held-{i}", "delay": 0} for i in range(args.inflight)])
    for i in range(args.inflight):
        acked[f"held-{i}"] = ("held", 0.0)
    holder.start()

    bar = Progress("scheduling", n)

    def load() -> None:
        own = Client(node.target, timeout=30)
        while not stop.is_set():
            with lock:
                start = next(next_chunk, None)
            if start is None:
                return
            specs = []
            for i in range(start, min(n, start + CHUNK)):
                if i % 100 == 0:  # 1% cron
                    specs.append({"queue": "crash", "id": f"c-{i}", "cron": CRON_EXPR})
                else:
                    due = fire_start + args.fire_window * i / n
                    specs.append({"queue": "crash", "id": f"j-{i}", "due": due, "payload": b"p"})
            try:
                own.schedule_many(specs)
            except WheelschedError:
                failures[0] += 1
                continue
            with lock:
                for s in specs:
                    acked[s["id"]] = (s["queue"], s.get("due"))
                bar.update(len(acked))
            for s in specs[1:: max(1, int(1 / args.cancel_fraction))]:
                if "due" not in s:
                    continue
                try:
                    own.cancel(s["id"])
                except WheelschedError:
                    continue
                with lock:
                    cancelled.add(s["id"])
        own.close()

    threads = [threading.Thread(target=load, daemon=True) for _ in range(args.threads)]
    t_load = time.monotonic()
    for t in threads:
        t.start()
    kill_at = int(n * args.kill_at)
    while len(acked) < kill_at and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    load_seconds = time.monotonic() - t_load
    node.kill()  # SIGKILL, load still running
    killed_with = len(acked)
    stop.set()
    t_restart = time.monotonic()
    node.start()
    to_serving = time.monotonic() - t_restart
    for t in threads:
        t.join(60)
    bar.close()
    held.set()
    status = client.status()
    data = node.data_dir

    # Verify every acknowledged job.
    seen: dict[str, Any] = {}
    vbar = Progress("verifying", len(acked))
    for job in client.list(page_size=1000):
        seen[job.id] = job
        vbar.update(len(seen))
    vbar.close()
    lost = [j for j in acked if j not in seen]
    wrong_spec = [j for j, (q, due) in acked.items() if j in seen and (
        seen[j].queue != q or (due is not None and due > 0 and
                               abs(seen[j].due.timestamp() - due) > 1e-5))]
    resurrected = [j for j in cancelled if j in seen and seen[j].state != "CANCELLED"]
    sample = rng.sample(sorted(j for j in acked if j.startswith("j-")), min(200, len(acked)))
    bad_payload = [j for j in sample if client.get(j, full=True).payload != b"p"]

    # Then they all fire.
    delivered: set[str] = set()
    dlock = threading.Lock()

    def handle(d) -> None:
        with dlock:
            delivered.add(d.job_id)

    worker = Worker(node.target, ["crash"], handle, concurrency=8, max_in_flight=2000)
    worker.start()
    expect = {j for j, (q, due) in acked.items() if q == "crash" and j not in cancelled}
    # Wait past the window while deliveries still come; give up after
    # --grace seconds without progress (then what is missing is reported).
    window_end = max(fire_start + args.fire_window, time.time())
    fbar = Progress("firing", len(expect))
    fire_t0 = time.time()
    last_count, last_progress = -1, time.time()
    while not expect <= delivered:
        count = len(delivered)
        now = time.time()
        if count != last_count:
            last_count, last_progress = count, now
        elif now > window_end and now - last_progress > args.grace:
            break
        fbar.update(len(delivered & expect))
        time.sleep(0.2)
    fire_seconds = time.time() - fire_t0
    fbar.close()
    time.sleep(0.5)
    worker.stop(timeout=10)
    holder.stop(timeout=10)
    never_fired = sorted(expect - delivered)
    fired_cancelled = sorted(cancelled & delivered)
    result = {
        "jobs_requested": n,
        "acked_before_kill": killed_with,
        "acked": len(acked),
        "cancelled": len(cancelled),
        "load_seconds": round(load_seconds, 3),
        "schedule_rate": round(killed_with / load_seconds) if load_seconds else None,
        "restart_to_serving_s": round(to_serving, 3),
        "replayed_records": status.replayed_records,
        "replay_seconds": round(status.replay_seconds, 3),
        "replay_rate": (round(status.replayed_records / status.replay_seconds)
                        if status.replay_seconds else None),
        "wal_bytes": _dir_bytes(data, ".wal"),
        "snapshot_bytes": _dir_bytes(data, ".snap"),
        "lost": len(lost),
        "wrong_spec": len(wrong_spec),
        "bad_payload_in_sample": len(bad_payload),
        "resurrected_cancels": len(resurrected),
        "never_fired": len(never_fired),
        "fire_phase_seconds": round(fire_seconds, 1),  # from the worker's start, due times included
        "fired_cancelled": len(fired_cancelled),
        "examples": {"lost": lost[:5], "never_fired": never_fired[:5], "resurrected": resurrected[:5]},
    }
    client.close()
    node.terminate()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=None,
                   help="jobs to schedule (default 1,000,000; --quick 30,000)")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--threads", type=int, default=4, help="concurrent schedule_many callers")
    p.add_argument("--kill-at", type=float, default=0.9, help="SIGKILL once this fraction is acknowledged")
    p.add_argument("--cancel-fraction", type=float, default=0.005)
    p.add_argument("--inflight", type=int, default=50, help="jobs a worker holds at the crash")
    p.add_argument("--fire-window", type=float, default=None, help="seconds the one-shot jobs are due over")
    p.add_argument("--grace", type=float, default=15.0,
                   help="after the window, give up once this long passes without a delivery")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (tests)")
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    args = p.parse_args(argv)
    if args.jobs is None:
        args.jobs = 3_000 if args.smoke else 30_000 if args.quick else 1_000_000
    if args.fire_window is None:
        args.fire_window = 3.0 if args.smoke else 5.0 if args.quick else 60.0
    if args.smoke:
        args.inflight = 5
    res = run(args)
    rows = [[k, v] for k, v in res.items() if k != "examples"]
    print_table(f"Crash replay: {args.jobs:,} jobs requested, SIGKILL at {args.kill_at:.0%}",
                ["figure", "value"], rows)
    ok = all(res[k] == 0 for k in ("lost", "wrong_spec", "bad_payload_in_sample",
                                    "resurrected_cancels", "never_fired", "fired_cancelled"))
    print(f"\n  {'OK' if ok else 'FAILED'}: lost {res['lost']}, resurrected cancels "
          f"{res['resurrected_cancels']}, never fired {res['never_fired']}; back to SERVING in "
          f"{res['restart_to_serving_s']} s (target <= 5 s at 1,000,000 jobs)")
    write_json(args.json, {"benchmark": "crash_replay", "args": vars(args), "result": res})
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
