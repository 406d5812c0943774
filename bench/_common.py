"""Shared plumbing for the benchmarks: argument conventions, the result
table with ratio columns, JSON output and a progress line on stderr.

Every benchmark measures its baselines in the same run (machines here are
shared and noisy: ratios hold, absolute times drift), so results are rows of
named figures and the table prints each figure next to its baseline.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes; finishes in under a minute")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    return parser


def machine_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def fmt_num(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 100):
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def print_table(title: str, headers: list[str], rows: list[list[Any]], file=None) -> None:
    """Print a plain aligned table (numbers formatted with fmt_num)."""
    file = file or sys.stdout
    cells = [[h for h in headers]] + [
        [c if isinstance(c, str) else fmt_num(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n{title}", file=file)
    for n, row in enumerate(cells):
        line = "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        print("  " + line, file=file)
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths), file=file)
    file.flush()


def ratio(value: float | None, baseline: float | None) -> str:
    if not value or not baseline:
        return "-"
    return f"{value / baseline:.2f}x"


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    payload = {"machine": machine_info(), **payload}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {path}", file=sys.stderr)


class Progress:
    """A one-line progress indicator on stderr (only when stderr is a tty or
    WHEELSCHED_PROGRESS=1), cheap enough to call from a benchmark loop."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.enabled = sys.stderr.isatty() or os.environ.get("WHEELSCHED_PROGRESS") == "1"
        self._last = 0.0
        self._start = time.perf_counter()

    def update(self, done: int) -> None:
        self.done = done
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < 0.2 and done < self.total:
            return
        self._last = now
        pct = 100.0 * done / self.total
        bar = "#" * int(pct / 4)
        sys.stderr.write(f"\r  {self.label:<28} [{bar:<25}] {pct:5.1f}%  {now - self._start:6.1f}s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self.update(self.total)
            sys.stderr.write("\n")
            sys.stderr.flush()


def progress(items: Iterable[T], label: str, total: int) -> Iterator[T]:
    bar = Progress(label, total)
    for n, item in enumerate(items, 1):
        yield item
        bar.update(n)
    bar.close()


class StealSampler:
    """CPU time the hypervisor took from this (virtual) machine, over time.

    On a shared VM a vCPU can be descheduled by the host for tens of ms; a
    process on it sees a stall no code of its own caused. Linux counts that
    time as ``steal`` in ``/proc/stat`` (both vCPUs summed, in clock ticks).
    A thread in the *parent* process samples it every ``interval_s`` while a
    measured child runs (the child itself is left undisturbed), and
    ``steal_ms(start, end)`` gives the steal within a wall-clock window, to
    the sampling resolution. ``None`` where ``/proc/stat`` has no such column.
    """

    def __init__(self, interval_s: float = 0.01) -> None:
        self._interval = interval_s
        self._samples: list[tuple[int, int]] = []  # (time.time_ns(), steal ticks), in time order
        self._tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steal-sampler", daemon=True)

    @staticmethod
    def read() -> int | None:
        """Steal ticks so far, all CPUs (None: not available here)."""
        try:
            with open("/proc/stat", "rb") as f:
                fields = f.readline().split()
        except OSError:
            return None
        return int(fields[8]) if len(fields) > 8 and fields[0] == b"cpu" else None

    def __enter__(self) -> StealSampler:
        if self.read() is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            value = self.read()
            if value is not None:
                self._samples.append((time.time_ns(), value))
            if self._stop.wait(self._interval):
                return

    def steal_ms(self, start_ns: int, end_ns: int) -> float | None:
        """Steal between the last sample at or before ``start_ns`` and the
        first at or after ``end_ns`` (None: the samples do not cover it)."""
        samples = self._samples
        i = bisect.bisect_right(samples, (start_ns, float("inf"))) - 1  # last at or before start
        j = bisect.bisect_left(samples, (end_ns, -1))  # first at or after end
        if i < 0 or j >= len(samples):
            return None
        return (samples[j][1] - samples[i][1]) * self._tick_ms
