"""Write-ahead log throughput, replay and recovery, against raw fsync and
SQLite measured in the same run.

    .venv/bin/python -m bench.wal [--quick] [--json PATH]

Records are 128 bytes framed (16-byte header + a 112-byte msgpack payload: a
110-byte bin). Concurrent appenders are asyncio tasks on one event loop, each
doing ``seq = log.append(p); await log.wait_durable(seq)`` in a loop (the way
the engine's gRPC handlers use it). SQLite: stdlib sqlite3, WAL journal,
synchronous=FULL, one INSERT of a 112-byte blob per row.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import base_parser, print_table, ratio, write_json
from wheelsched.wal import Committer, WALOptions, WriteAheadLog

PAYLOAD = b"\xab" * 110  # msgpack bin8: 112 bytes -> 128-byte framed record
STRUCTURED = ["schedule", 123456, "job-000000123", 1700000000123, "default", 3, b"x" * 70]


def fresh(root: Path, name: str) -> Path:
    d = root / name
    if d.exists():
        shutil.rmtree(d)
    return d


# ---------------------------------------------------------------- WAL appends
def wal_concurrent(root: Path, conc: int, total: int) -> float:
    d = fresh(root, f"conc{conc}")
    log = WriteAheadLog(d, WALOptions(fsync="always"))
    log.open()
    per = max(1, total // conc)

    async def appender() -> None:
        append, wait = log.append, log.wait_durable
        for _ in range(per):
            await wait(append(PAYLOAD))

    async def main() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(appender() for _ in range(conc)))
        return time.perf_counter() - t0

    dt = asyncio.run(main())
    log.close()
    shutil.rmtree(d)
    return per * conc / dt


def wal_batches(root: Path, total: int, batch: int = 1000) -> float:
    d = fresh(root, "batch")
    log = WriteAheadLog(d, WALOptions(fsync="always"))
    log.open()
    items = [PAYLOAD] * batch
    t0 = time.perf_counter()
    for _ in range(total // batch):
        log.wait_durable_sync(log.append_many(items))
    dt = time.perf_counter() - t0
    log.close()
    shutil.rmtree(d)
    return (total // batch) * batch / dt


def multi_log_waits(root: Path, how: str, n: int, logs: int = 16, touched: int = 12) -> float:
    """Event-loop CPU µs per wait on ``touched`` of ``logs`` logs sharing a
    committer (a node's call that touched many shards: a worker's acks, a
    schedule batch), 8 batches in flight, each appending one record per log:
    ``how`` = "gather" (one ``wait_durable`` per log, gathered) or "wait_all"
    (``Committer.wait_all``). fsync ``never``: the loop's cost, not the disk's."""
    d = fresh(root, f"multi-{how}")
    committer = Committer()
    wals = [WriteAheadLog(d / f"{i:02d}", WALOptions(fsync="never"), committer=committer)
            for i in range(logs)]
    for wal in wals:
        wal.open()

    async def one(k: int) -> None:
        waits = {}
        for j in range(touched):
            wal = wals[(k + j) % logs]
            waits[wal] = wal.append(PAYLOAD)
        if how == "gather":
            await asyncio.gather(*(wal.wait_durable(seq) for wal, seq in waits.items()))
        else:
            await committer.wait_all(waits)

    async def main() -> float:
        in_flight = asyncio.Semaphore(8)

        async def limited(k: int) -> None:
            async with in_flight:
                await one(k)

        t0 = time.thread_time()
        await asyncio.gather(*(limited(k) for k in range(n)))
        return time.thread_time() - t0

    cpu = asyncio.run(main())
    for wal in wals:
        wal.close()
    committer.close(5)
    shutil.rmtree(d)
    return cpu / n * 1e6


# ---------------------------------------------------------------- baselines
def raw_fsync(root: Path, n: int) -> float:
    path = root / "raw.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    rec = b"\xcd" * 128
    t0 = time.perf_counter()
    for _ in range(n):
        os.write(fd, rec)
        os.fdatasync(fd)
    dt = time.perf_counter() - t0
    os.close(fd)
    path.unlink()
    return n / dt


def sqlite_rate(root: Path, n: int, per_commit: int) -> float:
    path = root / "bench.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE ops (seq INTEGER PRIMARY KEY, payload BLOB)")
    blob = b"\xab" * 112
    t0 = time.perf_counter()
    for i in range(0, n, per_commit):
        con.execute("BEGIN")
        for j in range(per_commit):
            con.execute("INSERT INTO ops VALUES (?, ?)", (i + j, blob))
        con.execute("COMMIT")
    dt = time.perf_counter() - t0
    con.close()
    return n / dt


# ---------------------------------------------------------------- replay / recovery
def build_log(d: Path, n: int, payload: Any) -> None:
    log = WriteAheadLog(d, WALOptions(fsync="never"))
    log.open()
    chunk = [payload] * 10_000
    for _ in range(n // len(chunk)):
        log.append_many(chunk)
    log.close()


def replay_rate(d: Path) -> tuple[float, int]:
    log = WriteAheadLog(d)
    t0 = time.perf_counter()
    n = 0
    for _ in log.replay():
        n += 1
    dt = time.perf_counter() - t0
    log.close()
    return n / dt, n


def replay_batches_rate(d: Path) -> float:
    """The batch API the engine can use instead of one Record per record."""
    log = WriteAheadLog(d)
    t0 = time.perf_counter()
    n = 0
    for _kind, _first, payloads in log.replay_batches():
        n += len(payloads)
    dt = time.perf_counter() - t0
    log.close()
    return n / dt


def recovery_time(root: Path, live: int, after: int) -> tuple[float, int]:
    d = fresh(root, "recover")
    log = WriteAheadLog(d, WALOptions(fsync="never"))
    log.open()
    state = [(i, PAYLOAD) for i in range(live)]  # the "live records" of the shard
    chunk = [PAYLOAD] * 10_000
    for _ in range(live // len(chunk)):
        log.append_many(chunk)
    log.snapshot(state)
    log.wait_snapshot()
    for _ in range(after // len(chunk)):
        log.append_many(chunk)
    log.close()
    del state
    t0 = time.perf_counter()
    log = WriteAheadLog(d, WALOptions(fsync="always"))
    n = sum(1 for _ in log.replay())
    log.open()
    dt = time.perf_counter() - t0
    log.close()
    shutil.rmtree(d)
    return dt, n


def main(argv: list[str] | None = None) -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    q = args.quick
    root = Path(tempfile.mkdtemp(prefix="bench-wal-", dir=os.environ.get("BENCH_DIR")))
    results: dict[str, Any] = {"quick": q}
    try:
        say = lambda s: print(f"  .. {s}", file=sys.stderr, flush=True)  # noqa: E731
        say("baselines: raw write+fsync, sqlite")
        raw = raw_fsync(root, 1000 if q else 3000)
        sq1 = sqlite_rate(root, 1000 if q else 3000, 1)
        sq100 = sqlite_rate(root, 20_000 if q else 100_000, 100)
        say("wal concurrent appends (fsync=always)")
        c1 = wal_concurrent(root, 1, 1000 if q else 3000)
        c16 = wal_concurrent(root, 16, 10_000 if q else 40_000)
        c256 = wal_concurrent(root, 256, 60_000 if q else 300_000)
        say("wal batch appends")
        batch = wal_batches(root, 200_000 if q else 1_000_000)
        say("waits on 12 of 16 logs")
        n_multi = 5_000 if q else 20_000
        multi_gather = multi_log_waits(root, "gather", n_multi)
        multi_all = multi_log_waits(root, "wait_all", n_multi)
        n_replay = 1_000_000 if q else 5_000_000
        say(f"building a {n_replay:,}-record log")
        d = fresh(root, "replay")
        build_log(d, n_replay, PAYLOAD)
        size = sum(p.stat().st_size for p in d.iterdir())
        say("replaying")
        rep, rep_n = replay_rate(d)
        rep_b = replay_batches_rate(d)
        shutil.rmtree(d)
        n_struct = 200_000 if q else 1_000_000
        d = fresh(root, "replay-structured")
        build_log(d, n_struct, STRUCTURED)
        rep_s, _ = replay_rate(d)
        shutil.rmtree(d)
        live, after = (200_000, 200_000) if q else (1_000_000, 1_000_000)
        say(f"recovery of snapshot {live:,} + {after:,} ops")
        rec_s, rec_n = recovery_time(root, live, after)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rows = [
        ["raw write+fdatasync per record", raw, "1.00x", "-"],
        ["sqlite WAL/FULL, commit per row", sq1, ratio(sq1, raw), "1.00x"],
        ["sqlite WAL/FULL, commit per 100 rows", sq100, ratio(sq100, raw), ratio(sq100, sq1)],
        ["wal always, 1 appender (asyncio)", c1, ratio(c1, raw), ratio(c1, sq1)],
        ["wal always, 16 appenders (asyncio)", c16, ratio(c16, raw), ratio(c16, sq1)],
        ["wal always, 256 appenders (asyncio)", c256, ratio(c256, raw), ratio(c256, sq1)],
        ["wal always, append_many(1000) + wait", batch, ratio(batch, raw), ratio(batch, sq1)],
    ]
    print_table("Durable appends, 128-byte records (records/s)",
                ["case", "records/s", "vs raw fsync", "vs sqlite/row"], rows)
    print_table(
        "One wait on 12 of 16 logs sharing a committer (event-loop CPU per wait, lower is better)",
        ["case", "µs", "vs gather"],
        [["a wait_durable per log, gathered", multi_gather, "1.00x"],
         ["Committer.wait_all", multi_all, ratio(multi_all, multi_gather)]],
    )
    print_table(
        "Replay and recovery",
        ["case", "figure", "unit"],
        [
            [f"replay {rep_n:,} x 128 B records ({size / 2**20:.0f} MiB)", rep, "records/s"],
            [f"replay_batches() of the same {rep_n:,} records", rep_b, "records/s"],
            [f"replay {n_struct:,} structured 7-field op records", rep_s, "records/s"],
            [f"recover snapshot {live:,} + {after:,} ops ({rec_n:,} records)", rec_s, "s"],
        ],
    )
    targets = [
        ("256 appenders >= 100,000 acked/s", c256 >= 100_000, f"{c256:,.0f}/s"),
        ("append_many >= 2x sqlite per-100", batch >= 2 * sq100,
         f"{batch:,.0f}/s = {batch / sq100:.2f}x of {sq100:,.0f}/s"),
        ("replay >= 1,000,000 records/s", rep >= 1_000_000, f"{rep:,.0f}/s (128 B records)"),
        (f"recovery {live:,}+{after:,} <= 3 s", rec_s <= 3.0, f"{rec_s:.2f} s"),
    ]
    print("\nTargets")
    for name, ok, figure in targets:
        print(f"  {'MET   ' if ok else 'MISSED'}  {name:<40} {figure}")
    results.update(
        raw_fsync=raw, sqlite_per_row=sq1, sqlite_per_100=sq100, wal_1=c1, wal_16=c16, wal_256=c256,
        wal_batch_1000=batch, multi_log_wait_us_gather=multi_gather, multi_log_wait_us_wait_all=multi_all,
        replay_rps=rep, replay_batches_rps=rep_b, replay_records=rep_n,
        replay_structured_rps=rep_s,
        recovery_seconds=rec_s, recovery_records=rec_n,
        targets={name: ok for name, ok, _ in targets},
    )
    write_json(args.json, {"bench": "wal", "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
