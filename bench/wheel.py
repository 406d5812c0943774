"""Timing wheel benchmark: the C wheel, the pure-Python twin and heapq, in the
same run.

    .venv/bin/python -m bench.wheel [--quick] [--json PATH]

Workload: timer ids 0..n-1 with random deadlines over a day of 1 ms ticks
(86,400,000 ticks). Per implementation: inserts/s one call per timer and with
insert_many, cancels/s (a random 10%, one call each), expiries/s advancing in
1 s steps (1000 ticks) to the end of the day and in one big jump, and bytes
per pending timer. heapq baseline: heappush/heappop of (deadline, id) tuples,
cancel as lazy deletion (a set of cancelled ids skipped when popped), bytes
per entry by tracemalloc. The cyclic GC is disabled while timing (it would
otherwise walk the heap's millions of tuples and make heapq look worse).
"""

from __future__ import annotations

import gc
import heapq
import random
import time
import tracemalloc
from array import array
from typing import Any

from bench._common import Progress, base_parser, print_table, ratio, write_json
from wheelsched.wheel import IMPLEMENTATION, PyTimingWheel, TimingWheel

TICKS = 86_400_000  # one day of 1 ms ticks
STEP = 1000  # advance in 1 s steps
CANCEL_FRACTION = 10  # cancel one timer in 10

# Targets from issue #2 (ratios against heapq measured in the same run).
TARGET_INSERT_X = 3.0
TARGET_INSERT_MANY = 20e6
TARGET_EXPIRY_X = 20.0
TARGET_BYTES = 40.0


def make_inputs(n: int, seed: int = 1) -> tuple[array, array, list[int]]:
    rng = random.Random(seed)
    ids = array("q", range(n))
    rand = rng.randrange
    deadlines = array("q", [rand(1, TICKS) for _ in range(n)])
    cancels = rng.sample(range(n), n // CANCEL_FRACTION)
    return ids, deadlines, cancels


def timed(fn) -> float:
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def bench_wheel(cls: type, ids: array, deadlines: array, cancels: list[int], label: str) -> dict[str, Any]:
    n = len(ids)
    res: dict[str, Any] = {"n": n}
    bar = Progress(label, 5)

    w: Any = cls(0)

    def insert_each() -> None:
        ins = w.insert
        for i, d in zip(ids, deadlines, strict=True):
            ins(i, d)

    res["insert_per_s"] = n / timed(insert_each)
    res["bytes_per_timer"] = w.memory_bytes() / n
    bar.update(1)

    def cancel_each() -> None:
        cancel = w.cancel
        for i in cancels:
            cancel(i)

    res["cancel_per_s"] = len(cancels) / timed(cancel_each)
    bar.update(2)

    fired = 0

    def advance_steps() -> None:
        nonlocal fired
        adv = w.advance
        for t in range(STEP, TICKS + STEP, STEP):
            fired += len(adv(t))

    res["expiry_steps_per_s"] = (n - len(cancels)) / timed(advance_steps)
    assert fired == n - len(cancels) and len(w) == 0, (fired, len(w))
    w = None  # free it before the next phase
    bar.update(3)

    w2 = cls(0)
    res["insert_many_per_s"] = n / timed(lambda: w2.insert_many(ids, deadlines))
    bar.update(4)
    out: list[array] = []
    res["expiry_jump_per_s"] = n / timed(lambda: out.append(w2.advance(TICKS)))
    assert len(out[0]) == n
    bar.close()
    return res


def bench_heapq(ids: array, deadlines: array, cancels: list[int], label: str) -> dict[str, Any]:
    n = len(ids)
    res: dict[str, Any] = {"n": n}
    bar = Progress(label, 3)
    heap: list[tuple[int, int]] = []

    def push_each() -> None:
        push = heapq.heappush
        for i, d in zip(ids, deadlines, strict=True):
            push(heap, (d, i))

    res["insert_per_s"] = n / timed(push_each)
    bar.update(1)
    cancelled: set[int] = set()

    def cancel_each() -> None:
        add = cancelled.add
        for i in cancels:
            add(i)

    res["cancel_per_s"] = len(cancels) / timed(cancel_each)
    fired = 0

    def pop_steps() -> None:
        nonlocal fired
        pop = heapq.heappop
        for t in range(STEP, TICKS + STEP, STEP):
            while heap and heap[0][0] <= t:
                _, i = pop(heap)
                if i in cancelled:
                    cancelled.discard(i)
                else:
                    fired += 1

    res["expiry_steps_per_s"] = (n - len(cancels)) / timed(pop_steps)
    assert fired == n - len(cancels)
    bar.update(2)

    # Bytes per entry: tracemalloc slows pushes ~3x, so measure on at most 1M.
    m = min(n, 1_000_000)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    heap2: list[tuple[int, int]] = []
    push = heapq.heappush
    for k in range(m):
        push(heap2, (deadlines[k], ids[k]))
    res["bytes_per_timer"] = (tracemalloc.get_traced_memory()[0] - base) / m
    res["bytes_measured_at"] = m
    tracemalloc.stop()
    del heap2
    bar.close()
    return res


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    sizes = [1_000_000] if args.quick else [1_000_000, 10_000_000]
    twin_max = 200_000 if args.quick else 1_000_000
    if IMPLEMENTATION != "c":
        print("note: the C extension is not built; 'C' rows run the pure-Python twin")

    results: dict[str, Any] = {"sizes": sizes, "twin_max": twin_max, "rows": {}}
    headers = ["figure", "C wheel", "Py twin", "heapq", "C/heapq", "twin/heapq"]
    for n in sizes:
        ids, deadlines, cancels = make_inputs(n)
        c = bench_wheel(TimingWheel, ids, deadlines, cancels, f"C wheel {n:,}")
        h = bench_heapq(ids, deadlines, cancels, f"heapq {n:,}")
        tn = min(n, twin_max)
        if tn == n:
            t_ids, t_dls, t_cancels = ids, deadlines, cancels
        else:
            t_ids, t_dls, t_cancels = make_inputs(tn)
        p = bench_wheel(PyTimingWheel, t_ids, t_dls, t_cancels, f"Py twin {tn:,}")
        results["rows"][n] = {"c": c, "twin": p, "heapq": h}
        rows = []
        for key, label in (
            ("insert_per_s", "inserts/s (one call each)"),
            ("insert_many_per_s", "inserts/s (insert_many)"),
            ("cancel_per_s", "cancels/s"),
            ("expiry_steps_per_s", "expiries/s (1 s steps)"),
            ("expiry_jump_per_s", "expiries/s (one jump)"),
            ("bytes_per_timer", "bytes per pending timer"),
        ):
            base_key = {"insert_many_per_s": "insert_per_s", "expiry_jump_per_s": "expiry_steps_per_s"}.get(
                key, key
            )
            hv = h.get(base_key)
            if key == "bytes_per_timer":  # lower is better: show heapq / wheel
                rows.append([label, c[key], p[key], hv, ratio(hv, c[key]), ratio(hv, p[key])])
            else:
                rows.append([label, c[key], p[key], hv, ratio(c[key], hv), ratio(p[key], hv)])
        twin_note = f" (twin at {tn:,})" if tn != n else ""
        print_table(
            f"timing wheel, {n:,} timers, deadlines over {TICKS:,} ticks{twin_note}; "
            f"heapq bytes by tracemalloc at {h['bytes_measured_at']:,}; "
            "heapq has no insert_many/jump: those ratios use its push / stepped pop; "
            "bytes ratio = heapq / wheel",
            headers,
            rows,
        )

    big = max(sizes)
    r = results["rows"][big]
    c, h = r["c"], r["heapq"]
    checks = [
        (
            "single-call insert >= 3x heapq push",
            c["insert_per_s"] / h["insert_per_s"] >= TARGET_INSERT_X,
            f"{c['insert_per_s'] / 1e6:.2f}M/s vs {h['insert_per_s'] / 1e6:.2f}M/s = "
            f"{c['insert_per_s'] / h['insert_per_s']:.2f}x",
        ),
        (
            "insert_many >= 20M timers/s",
            c["insert_many_per_s"] >= TARGET_INSERT_MANY,
            f"{c['insert_many_per_s'] / 1e6:.1f}M/s",
        ),
        (
            "expiry (1 s steps) >= 20x heapq pop",
            c["expiry_steps_per_s"] / h["expiry_steps_per_s"] >= TARGET_EXPIRY_X,
            f"{c['expiry_steps_per_s'] / 1e6:.2f}M/s vs {h['expiry_steps_per_s'] / 1e6:.3f}M/s = "
            f"{c['expiry_steps_per_s'] / h['expiry_steps_per_s']:.1f}x",
        ),
        (
            "expiry (one jump) >= 20x heapq pop",
            c["expiry_jump_per_s"] / h["expiry_steps_per_s"] >= TARGET_EXPIRY_X,
            f"{c['expiry_jump_per_s'] / 1e6:.2f}M/s vs {h['expiry_steps_per_s'] / 1e6:.3f}M/s = "
            f"{c['expiry_jump_per_s'] / h['expiry_steps_per_s']:.1f}x",
        ),
        (
            f"<= 40 bytes per pending timer (at {big:,}"
            + ("; target is at 10M)" if big < 10_000_000 else ")"),
            c["bytes_per_timer"] <= TARGET_BYTES,
            f"{c['bytes_per_timer']:.1f} B (heapq {h['bytes_per_timer']:.0f} B)",
        ),
    ]
    print(f"\ntargets (C wheel at {big:,} timers):")
    for name, ok, detail in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {name}: {detail}")
    results["targets"] = [{"target": name, "met": ok, "detail": d} for name, ok, d in checks]
    results["implementation"] = IMPLEMENTATION
    write_json(args.json, {"benchmark": "wheel", **results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
