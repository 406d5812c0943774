"""The ticker, both implementations: the GIL-free C one (native timer thread
and eventfd) and the pure-Python thread it falls back to. These check
correctness with generous time bounds, not latency (bench for that)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from wheelsched.server import ticker as ticker_mod
from wheelsched.server.ticker import CTicker, PyTicker, Ticker, wall_us

PURE = os.environ.get("WHEELSCHED_PURE_PYTHON", "") not in ("", "0")
ROOT = Path(__file__).resolve().parent.parent

IMPLS = [
    pytest.param(PyTicker, id="py"),
    pytest.param(
        CTicker,
        id="c",
        marks=pytest.mark.skipif(ticker_mod.WakeTimer is None, reason="C ticker not in use"),
    ),
]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> type[Ticker]:
    return request.param


class Recorder:
    """on_due for a ticker: records when it ran and checks it is on the loop thread."""

    def __init__(self, then: Callable[[int], None] | None = None) -> None:
        self.times: list[int] = []  # wall µs at each call
        self.wrong_thread = 0
        self.event = asyncio.Event()
        self.loop_thread = threading.get_ident()
        self.then = then

    def __call__(self) -> None:
        self.times.append(wall_us())
        if threading.get_ident() != self.loop_thread:
            self.wrong_thread += 1
        self.event.set()
        if self.then is not None:
            self.then(len(self.times))

    async def wait(self, count: int = 1, timeout: float = 2.0) -> None:
        """Until on_due has run ``count`` times in all."""
        async with asyncio.timeout(timeout):
            while len(self.times) < count:
                self.event.clear()
                await self.event.wait()


def run_with(impl: type[Ticker], body: Callable[[Ticker, Recorder], object],
             then: Callable[[int], None] | None = None) -> Recorder:
    """Run ``body(ticker, recorder)`` (a coroutine function) on a fresh loop."""

    async def main() -> Recorder:
        rec = Recorder(then)
        t = impl(asyncio.get_running_loop(), rec)
        t.start()
        try:
            await body(t, rec)  # type: ignore[misc]
        finally:
            t.stop()
        return rec

    rec = asyncio.run(main())
    assert rec.wrong_thread == 0, "on_due ran off the loop thread"
    return rec


def test_c_extension_is_built() -> None:
    """CI must test the C ticker, not the Python one twice."""
    if PURE:
        assert ticker_mod.IMPLEMENTATION == "python"
        pytest.skip("WHEELSCHED_PURE_PYTHON is set")
    assert ticker_mod.WakeTimer is not None, "wheelsched._ticker_c did not import: build it"
    assert ticker_mod.IMPLEMENTATION == "c"


def test_ticker_picks_implementation() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        default = Ticker(loop, lambda: None)
        custom = Ticker(loop, lambda: None, clock=lambda: time.monotonic_ns() // 1000)
        try:
            expected = CTicker if ticker_mod.IMPLEMENTATION == "c" else PyTicker
            assert type(default) is expected
            assert default.implementation == ticker_mod.IMPLEMENTATION
            assert type(custom) is PyTicker  # the C timer only keeps wall-clock time
        finally:
            default.stop()
            custom.stop()

    asyncio.run(main())


@pytest.mark.parametrize(("value", "expected"), [("1", "python"), ("0", None), ("", None)])
def test_pure_python_env(value: str, expected: str | None) -> None:
    code = (
        "import asyncio\n"
        "from wheelsched.server import ticker\n"
        "loop = asyncio.new_event_loop()\n"
        "t = ticker.Ticker(loop, lambda: None)\n"
        "print(ticker.IMPLEMENTATION, t.implementation)\n"
        "t.stop()\n"
    )
    env = {**os.environ, "WHEELSCHED_PURE_PYTHON": value,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    if expected is None:  # not forced: the C one whenever it is built
        import importlib.util
        expected = "c" if importlib.util.find_spec("wheelsched._ticker_c") else "python"
    assert out == [expected, expected]


def test_past_target_fires_at_once(impl: type[Ticker]) -> None:
    async def body(t: Ticker, rec: Recorder) -> None:
        start = wall_us()
        t.set_target(start - 1_000)
        await rec.wait()
        assert rec.times[0] - start < 100_000

    assert len(run_with(impl, body).times) == 1


def test_fires_on_time(impl: type[Ticker]) -> None:
    async def body(t: Ticker, rec: Recorder) -> None:
        target = wall_us() + 20_000
        t.set_target(target)
        await rec.wait()
        assert rec.times[0] >= target, "fired early"
        assert rec.times[0] - target < 15_000

    run_with(impl, body)


def test_earlier_target_wakes_earlier(impl: type[Ticker]) -> None:
    async def body(t: Ticker, rec: Recorder) -> None:
        t.set_target(wall_us() + 10_000_000)
        await asyncio.sleep(0.02)  # the timer sleeps toward the far target
        target = wall_us() + 20_000
        t.set_target(target)
        await rec.wait(timeout=1.0)
        assert target <= rec.times[0] < target + 500_000

    run_with(impl, body)


def test_later_target_replaces_earlier(impl: type[Ticker]) -> None:
    async def body(t: Ticker, rec: Recorder) -> None:
        first = wall_us() + 20_000
        t.set_target(first)
        second = first + 60_000
        t.set_target(second)
        await rec.wait()
        assert rec.times[0] >= second

    run_with(impl, body)


def test_none_never_fires(impl: type[Ticker]) -> None:
    async def body(t: Ticker, rec: Recorder) -> None:
        await asyncio.sleep(0.02)  # idle from the start
        t.set_target(wall_us() + 10_000)
        t.set_target(None)
        await asyncio.sleep(0.1)

    assert run_with(impl, body).times == []


def test_repeated_cycles_fire_once_each(impl: type[Ticker]) -> None:
    n = 200
    targets: list[int] = []

    async def body(t: Ticker, rec: Recorder) -> None:
        for i in range(n):
            targets.append(wall_us() + (i % 3) * 200 - 100)  # past, now-ish, ahead
            t.set_target(targets[-1])
            await rec.wait(i + 1)
            assert len(rec.times) == i + 1
        await asyncio.sleep(0.05)  # nothing more comes

    rec = run_with(impl, body)
    assert len(rec.times) == n
    assert all(at >= target for at, target in zip(rec.times, targets, strict=True))


def test_on_due_sets_next_target(impl: type[Ticker]) -> None:
    """The node's pattern: each tick sets the next target from inside on_due."""
    n = 200
    box: dict[str, Ticker] = {}
    done = threading.Event()

    def then(count: int) -> None:
        if count < n:
            box["t"].set_target(wall_us() + 100)
        else:
            box["t"].set_target(None)
            done.set()

    async def body(t: Ticker, rec: Recorder) -> None:
        box["t"] = t
        t.set_target(wall_us())
        deadline = time.monotonic() + 10
        while not done.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)

    assert len(run_with(impl, body, then).times) == n


def test_target_set_while_wake_pending(impl: type[Ticker]) -> None:
    """A target set after a wake but before on_due ran fires once, after it."""

    async def body(t: Ticker, rec: Recorder) -> None:
        t.set_target(wall_us())
        time.sleep(0.02)  # the loop is busy: the wake waits for it
        t.set_target(wall_us())
        await rec.wait(2)
        await asyncio.sleep(0.05)

    assert len(run_with(impl, body).times) == 2


def test_stop_is_prompt_and_idempotent(impl: type[Ticker]) -> None:
    async def body(t: Ticker, rec: Recorder) -> None:
        t.set_target(wall_us() + 10_000_000)
        await asyncio.sleep(0.01)
        start = time.monotonic()
        t.stop()
        t.stop()
        assert time.monotonic() - start < 0.5
        t.set_target(wall_us())  # harmless once stopped
        await asyncio.sleep(0.05)

    assert run_with(impl, body).times == []


def test_stop_before_start(impl: type[Ticker]) -> None:
    async def main() -> None:
        t = impl(asyncio.get_running_loop(), lambda: None)
        t.set_target(wall_us())
        t.stop()
        t.stop()

    asyncio.run(main())
