"""Helpers for the WAL tests: a fault-injection hook, small log builders, and
a child-process appender (run as a script: ``python tests/wal_helpers.py``)
that the crash tests SIGKILL.

Child protocol: argv = DIR FSYNC SEGMENT_BYTES TAG [FAULT_POINT FAULT_NTH
SNAPSHOT_EVERY]. It replays DIR (rebuilding the "state" = every payload in
order), opens it, then appends payloads ``[TAG, i]`` from 8 asyncio tasks
and prints ``ACK <seq> <i>`` after each ``wait_durable`` returns. With
SNAPSHOT_EVERY > 0 it snapshots the state every that many appends. With a
fault point, the hook SIGKILLs the process at the FAULT_NTH hit of it.

Fenced child (``python tests/wal_helpers.py fenced DIR FENCE TAG
SEGMENT_BYTES [STOP_POINT STOP_NTH]``): the same appender on a log opened
with fence FENCE (fsync always). The first ``FencedError`` makes it print
``FENCED <type> <message>``, stop appending, close the log and exit 0.
With a stop point, the process SIGSTOPs itself at the STOP_NTH hit of it.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()

PURE = os.environ.get("WHEELSCHED_PURE_PYTHON", "") not in ("", "0")

# The record walk exists twice (decoder.py): "c" (csrc/walscan.c) and the
# pure-Python reference; "c-swcrc" is the C walk on its software CRC32C.
IMPLEMENTATIONS = ["c", "c-swcrc", "python"]


def wal_impl_fixture(params: list[str] | None = None) -> Any:
    """An autouse fixture running every test of a module once per walk
    (``wal_impl = wal_impl_fixture()`` in the module)."""
    import pytest

    @pytest.fixture(params=params or ["c", "python"], autouse=True)
    def wal_impl(request: Any, monkeypatch: Any) -> Iterator[str]:
        from wheelsched.wal import decoder

        name = request.param
        previous = decoder.IMPLEMENTATION
        if name.startswith("c"):
            if PURE:
                pytest.skip("WHEELSCHED_PURE_PYTHON is set: the C walk is not tested")
            from wheelsched.wal import _scan_c  # the test fails if the extension is missing

            monkeypatch.delenv("WHEELSCHED_PURE_PYTHON", raising=False)
            hw = _scan_c.hardware_crc()
            _scan_c.use_hardware_crc(name == "c")
            decoder.use_implementation("c")
            try:
                yield name
            finally:
                _scan_c.use_hardware_crc(hw)
                decoder.use_implementation(previous)
        else:
            monkeypatch.setenv("WHEELSCHED_PURE_PYTHON", "1")
            decoder.use_implementation("python")
            try:
                yield name
            finally:
                decoder.use_implementation(previous)

    return wal_impl


class Faults:
    """Test-only hook: ``actions[point]`` is called at each hit of ``point``
    (it may raise, e.g. OSError, or kill the process). Records every hit."""

    def __init__(self, actions: dict[str, Callable[[int], None]] | None = None) -> None:
        self.actions = actions or {}
        self.hits: dict[str, int] = {}

    def hit(self, point: str) -> None:
        n = self.hits.get(point, 0) + 1
        self.hits[point] = n
        action = self.actions.get(point)
        if action is not None:
            action(n)


def fail_fsync(after: int = 0) -> Callable[[int], None]:
    def action(n: int) -> None:
        if n > after:
            raise OSError(errno.EIO, "Input/output error (injected)")

    return action


def kill_at(nth: int) -> Callable[[int], None]:
    def action(n: int) -> None:
        if n == nth:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    return action


def stop_at(nth: int) -> Callable[[int], None]:
    """Freeze the process (SIGSTOP) at the nth hit: whoever sends SIGCONT
    resumes it right there. Sent to the calling thread: a process-directed
    SIGSTOP may be taken by another thread, and this one would run on into
    its next system call before the stop reaches it."""

    def action(n: int) -> None:
        if n == nth:
            sys.stdout.flush()
            signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)

    return action


def replay_all(directory: Path | str, **kw: Any) -> list[Any]:
    from wheelsched.wal import WriteAheadLog

    log = WriteAheadLog(directory, **kw)
    try:
        return list(log.replay())
    finally:
        log.close()


def rebuild_state(records: list[Any]) -> list[Any]:
    """The tests' 'engine': state = list of every op payload, a snapshot is
    that list."""
    from wheelsched.wal import OP, SNAPSHOT

    state: list[Any] = []
    for r in records:
        if r.kind == SNAPSHOT:
            state.append(r.payload)
        else:
            assert r.kind == OP
            state.append(r.payload)
    return state


def copy_dir(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def child_main(argv: list[str]) -> None:
    import asyncio

    from wheelsched.wal import WALOptions, WriteAheadLog

    directory, fsync, seg_bytes, tag = argv[0], argv[1], int(argv[2]), argv[3]
    point = argv[4] if len(argv) > 4 else ""
    nth = int(argv[5]) if len(argv) > 5 else 0
    snap_every = int(argv[6]) if len(argv) > 6 else 0
    faults = Faults({point: kill_at(nth)}) if point else None
    log = WriteAheadLog(directory, WALOptions(segment_bytes=seg_bytes, fsync=fsync), meta={"tag": tag},
                        _faults=faults)
    state = [tuple(r.payload) for r in log.replay()]
    log.open()
    out = sys.stdout
    out.write(f"READY {len(state)}\n")
    out.flush()

    counter = iter(range(10**9))

    async def task() -> None:
        while True:
            i = next(counter)
            payload = (tag, i)
            seq = log.append(payload)
            state.append(payload)
            if snap_every and i and i % snap_every == 0:
                log.snapshot(list(state))
            await log.wait_durable(seq)
            out.write(f"ACK {seq} {i}\n")
            out.flush()

    async def main() -> None:
        await asyncio.gather(*(task() for _ in range(8)))

    asyncio.run(main())


def fenced_child_main(argv: list[str]) -> None:
    import asyncio

    from wheelsched.wal import FencedError, WALOptions, WriteAheadLog

    directory, fence, tag, seg_bytes = argv[0], argv[1], argv[2], int(argv[3])
    point = argv[4] if len(argv) > 4 else ""
    nth = int(argv[5]) if len(argv) > 5 else 0
    faults = Faults({point: stop_at(nth)}) if point else None
    log = WriteAheadLog(directory, WALOptions(segment_bytes=seg_bytes, fsync="always"),
                        meta={"tag": tag, "fence": fence}, fence=fence, _faults=faults)
    replayed = sum(1 for _ in log.replay())
    log.open()
    out = sys.stdout
    out.write(f"READY {replayed}\n")
    out.flush()
    counter = iter(range(10**9))
    fenced: list[BaseException] = []

    async def task() -> None:
        while not fenced:
            i = next(counter)
            try:
                seq = log.append((tag, i))
                await log.wait_durable(seq)
            except FencedError as exc:
                if not fenced:
                    fenced.append(exc)
                    out.write(f"FENCED {type(exc).__name__} {exc}\n")
                    out.flush()
                return
            out.write(f"ACK {seq} {i}\n")
            out.flush()

    async def main() -> None:
        await asyncio.gather(*(task() for _ in range(8)))

    asyncio.run(main())
    log.close()
    out.write(f"DONE fenced={log.fenced}\n")
    out.flush()


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent.parent))
    if sys.argv[1:2] == ["fenced"]:
        fenced_child_main(sys.argv[2:])
    else:
        child_main(sys.argv[1:])


def run_threads(target: Callable[[int], None], n: int) -> None:
    """Run ``target(k)`` for k in 0..n-1, each on its own thread, and join them."""
    threads = [threading.Thread(target=target, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
