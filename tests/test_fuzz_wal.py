"""Issue #7: hostile input for the WAL decoder (bounded Hypothesis runs).

Random bytes and mutated copies of a valid log (segments and a snapshot) go
through recovery with both record walks (C and pure Python). Recovery must
either succeed or raise the log's own ``WALError`` (``CorruptLogError``
naming file and offset) — never another exception, never hang (a SIGALRM
per example turns a hang into a failure). When recovery succeeds, opening
the log (which cuts a torn tail), appending and replaying again must give
back exactly the records read before plus the new one.

Longer runs: ``WHEELSCHED_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest
tests/test_fuzz_wal.py`` (see README, Operations).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wheelsched.wal import OP, WALError, WALOptions, WriteAheadLog, decoder
from wheelsched.wal.decoder import Recovery

EXAMPLES = int(os.environ.get("WHEELSCHED_FUZZ_EXAMPLES", "150"))
HANG_SECONDS = 10
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                derandomize=not os.environ.get("WHEELSCHED_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
IMPLS = ["python"] + ([] if os.environ.get("WHEELSCHED_PURE_PYTHON", "") not in ("", "0") else ["c"])


@contextlib.contextmanager
def no_hang(seconds: int = HANG_SECONDS):
    def fire(signum, frame):
        raise TimeoutError(f"WAL recovery hung for {seconds}s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def valid_log(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A small valid log: a snapshot, then two segments of records."""
    d = tmp_path_factory.mktemp("valid-log")
    opts = WALOptions(fsync="never", segment_bytes=4096)
    log = WriteAheadLog(d, opts, meta={"shard": 0})
    list(log.replay())
    log.open()
    try:
        for i in range(40):
            log.append(["op", i, "x" * (i % 7), {"k": i}])
        assert log.snapshot([["item", i] for i in range(5)])
        assert log.wait_snapshot(30)
        for i in range(40, 300):
            log.append(["op", i, b"\x00\xff" * (i % 5)])
        log.wait_durable_sync(log.last_seq, 30)
    finally:
        log.close()
    files = {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.suffix in (".wal", ".snap")}
    assert any(n.endswith(".snap") for n in files) and sum(n.endswith(".wal") for n in files) >= 2
    return files


def _recover(directory: Path, impl: str) -> list | None:
    """Records read, or None when recovery refused the log with a WALError."""
    decoder.use_implementation(impl)
    try:
        with no_hang():
            return [(r.seq, r.kind, r.payload) for r in Recovery(directory).records(decode=True)]
    except WALError:
        return None


def _check(files: dict[str, bytes], impl: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "log"
        d.mkdir()
        for name, data in files.items():
            (d / name).write_bytes(data)
        before = _recover(d, impl)
        if before is None:
            return
        # Recovery accepted it: open (cutting a torn tail), append, replay.
        with no_hang():
            log = WriteAheadLog(d, WALOptions(fsync="never"), meta={"shard": 0})
            try:
                replayed = [(r.seq, r.kind, r.payload) for r in log.replay()]
                assert replayed == before
                log.open()
                seq = log.append(["fuzz", "after"])
                log.wait_durable_sync(seq, 10)
            finally:
                log.close()
        after = _recover(d, impl)
        assert after is not None, "a log recovery accepted was refused after open + append"
        assert after == [*before, (seq, OP, ["fuzz", "after"])]


@pytest.fixture(autouse=True)
def _restore_impl():
    previous = decoder.IMPLEMENTATION
    yield
    decoder.use_implementation(previous)


@pytest.mark.parametrize("impl", IMPLS)
@FUZZ
@given(data=st.binary(max_size=2048), as_snapshot=st.booleans())
def test_random_bytes(impl: str, data: bytes, as_snapshot: bool) -> None:
    name = "0000000000000001.snap" if as_snapshot else "0000000000000001.wal"
    _check({name: data}, impl)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("zero"), st.integers(0, 1 << 20), st.integers(1, 64)),
    st.tuples(st.just("delete_file"), st.just(0), st.just(0)),
)


def _mutate(data: bytes, op: tuple) -> bytes | None:
    kind, pos, arg = op
    if kind == "delete_file":
        return None
    pos = pos % (len(data) + 1)
    if kind == "flip":
        if pos == len(data):
            return data
        return data[:pos] + bytes([data[pos] ^ arg]) + data[pos + 1 :]
    if kind == "truncate":
        return data[:pos]
    if kind == "insert":
        return data[:pos] + arg + data[pos:]
    return data[:pos] + b"\0" * arg + data[pos + arg :]


@pytest.mark.parametrize("impl", IMPLS)
@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 16), mutation), min_size=1, max_size=4))
def test_mutated_valid_log(valid_log: dict[str, bytes], impl: str, edits: list) -> None:
    files = dict(valid_log)
    for which, op in edits:
        if not files:
            break
        name = sorted(files)[which % len(files)]
        new = _mutate(files[name], op)
        if new is None:
            del files[name]
        else:
            files[name] = new
    _check(files, impl)


def test_valid_log_recovers(valid_log: dict[str, bytes]) -> None:
    for impl in IMPLS:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in valid_log.items():
                Path(tmp, name).write_bytes(data)
            records = _recover(Path(tmp), impl)
            assert records is not None and len(records) == 5 + 260
            shutil.rmtree(tmp, ignore_errors=True)
