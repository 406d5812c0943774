"""One ``Committer`` thread serving many logs: every log's records are
written, synced and published in order; one log failing leaves the others
alone; interval fsyncs still happen; closing in any order, and attaching
after others closed, works."""

from __future__ import annotations

import asyncio
import errno
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from wal_helpers import Faults, fail_fsync, replay_all, run_threads

from wheelsched.wal import OP, Committer, FencedError, LogFailedError, WALError, WALOptions, WriteAheadLog


def opened(d: Path, committer: Committer, faults: Faults | None = None, **kw: Any) -> WriteAheadLog:
    log = WriteAheadLog(d, WALOptions(**kw), meta={"dir": d.name}, committer=committer, _faults=faults)
    log.open()
    return log


def writer_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def ops(d: Path) -> list[Any]:
    return [r.payload for r in replay_all(d) if r.kind == OP]


def test_many_logs_one_thread_everything_in_order(tmp_path: Path) -> None:
    committer = Committer(name="wal-writer-shared-test")
    logs = [opened(tmp_path / f"{i:02d}", committer, fsync="always") for i in range(8)]
    assert len(writer_threads("wal-writer-shared-test")) == 1

    def append(k: int) -> None:
        log = logs[k]
        last = 0
        for i in range(300):
            last = log.append_many([[k, i, j] for j in range(3)]) if i % 2 else log.append([k, i])
        assert log.wait_durable_sync(last, timeout=30)

    run_threads(append, 8)
    assert len(writer_threads("wal-writer-shared-test")) == 1
    for log in logs:
        assert log.durable_seq == log.last_seq
        assert log.stats()["fsyncs"] >= 1
        log.close()
    committer.close(timeout=5)
    assert not writer_threads("wal-writer-shared-test")
    for k in range(8):
        expected: list[Any] = []
        for i in range(300):
            expected += [[k, i, j] for j in range(3)] if i % 2 else [[k, i]]
        assert ops(tmp_path / f"{k:02d}") == expected


def test_asyncio_waiters_of_several_logs(tmp_path: Path) -> None:
    committer = Committer()
    logs = [opened(tmp_path / f"{i}", committer, fsync="always") for i in range(4)]

    async def main() -> None:
        async def one(k: int, i: int) -> int:
            seq = logs[k].append([k, i])
            await logs[k].wait_durable(seq)
            assert logs[k].durable_seq >= seq
            return seq

        seqs = await asyncio.gather(*(one(k, i) for i in range(200) for k in range(4)))
        assert len(seqs) == 800

    asyncio.run(main())
    for log in logs:
        log.close()
    committer.close(timeout=5)
    for k in range(4):
        assert ops(tmp_path / f"{k}") == [[k, i] for i in range(200)]


def test_one_failing_log_leaves_the_others_alone(tmp_path: Path) -> None:
    committer = Committer()
    bad = opened(tmp_path / "bad", committer, Faults({"fsync": fail_fsync()}), fsync="always")
    good = opened(tmp_path / "good", committer, fsync="always")
    with pytest.raises(LogFailedError):
        bad.wait_durable_sync(bad.append(["doomed"]), timeout=10)
    with pytest.raises(LogFailedError):
        bad.append(["refused"])
    for i in range(50):
        assert good.wait_durable_sync(good.append(["ok", i]), timeout=10)
    bad.close()  # a failed log closes without waiting for anything
    for i in range(50, 60):
        assert good.wait_durable_sync(good.append(["ok", i]), timeout=10)
    good.close()
    committer.close(timeout=5)
    assert ops(tmp_path / "good") == [["ok", i] for i in range(60)]


def test_write_error_fails_only_that_log(tmp_path: Path) -> None:
    def eio(n: int) -> None:
        raise OSError(errno.EIO, "Input/output error (injected)")

    committer = Committer()
    bad = opened(tmp_path / "bad", committer, Faults({"write.before_write": eio}), fsync="never")
    good = opened(tmp_path / "good", committer, fsync="never")
    seq = bad.append(["x"])
    with pytest.raises(LogFailedError, match="Input/output error"):
        bad.wait_durable_sync(seq, timeout=10)
    assert good.wait_durable_sync(good.append(["y"]), timeout=10)
    bad.close()
    good.close()
    committer.close(timeout=5)


def test_interval_fsync_happens_without_further_appends(tmp_path: Path) -> None:
    committer = Committer()
    a = opened(tmp_path / "a", committer, fsync="interval:30")
    b = opened(tmp_path / "b", committer, fsync="interval:30")
    a.wait_durable_sync(a.append(["a"]), timeout=5)
    b.wait_durable_sync(b.append(["b"]), timeout=5)
    deadline = time.monotonic() + 5
    while (a._synced_seq < a.last_seq or b._synced_seq < b.last_seq) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert a._synced_seq == a.last_seq and b._synced_seq == b.last_seq
    assert a.stats()["fsyncs"] >= 1 and b.stats()["fsyncs"] >= 1
    a.close()
    b.close()
    committer.close(timeout=5)


def test_interval_fsync_is_not_starved_by_a_busy_log(tmp_path: Path) -> None:
    """An interval log's owed fsync happens on time while another log keeps
    the thread busy with a round after round."""
    committer = Committer()
    quiet = opened(tmp_path / "quiet", committer, fsync="interval:50")
    busy = opened(tmp_path / "busy", committer, fsync="never")
    quiet.wait_durable_sync(quiet.append(["q"]), timeout=5)
    assert quiet._synced_seq < quiet.last_seq
    deadline = time.monotonic() + 5
    while quiet._synced_seq < quiet.last_seq and time.monotonic() < deadline:
        busy.append(["b"])  # each append queues the busy log again
    assert quiet._synced_seq == quiet.last_seq
    assert quiet.stats()["fsyncs"] >= 1
    quiet.close()
    busy.close()
    committer.close(timeout=5)


def test_close_in_any_order_and_attach_after_others_closed(tmp_path: Path) -> None:
    committer = Committer(name="wal-writer-order-test")
    first = opened(tmp_path / "1", committer, fsync="always")
    second = opened(tmp_path / "2", committer, fsync="never")
    first.append(["one"])
    second.append(["two"])
    second.close()  # closing writes and syncs what was queued
    third = opened(tmp_path / "3", committer, fsync="always")
    assert third.wait_durable_sync(third.append(["three"]), timeout=5)
    first.close()
    third.close()
    committer.close(timeout=5)
    assert not writer_threads("wal-writer-order-test")
    assert ops(tmp_path / "1") == [["one"]]
    assert ops(tmp_path / "2") == [["two"]]
    assert ops(tmp_path / "3") == [["three"]]
    with pytest.raises(RuntimeError, match="closed"):
        opened(tmp_path / "4", committer)


def test_fenced_log_on_a_shared_committer(tmp_path: Path) -> None:
    """A deposed log fails with FencedError; its successor and a neighbour
    on the same committer carry on."""
    committer = Committer()
    old = WriteAheadLog(tmp_path / "s", WALOptions(fsync="always"), meta={"epoch": 1},
                        fence="1 node-a", committer=committer)
    old.open()
    other = opened(tmp_path / "other", committer, fsync="always")
    assert old.wait_durable_sync(old.append(["before"]), timeout=5)
    new = WriteAheadLog(tmp_path / "s", WALOptions(fsync="always"), meta={"epoch": 2},
                        fence="2 node-b", committer=committer)
    new.open()  # installs its fence: the old writer is deposed
    with pytest.raises(FencedError):
        old.wait_durable_sync(old.append(["after"]), timeout=5)
    assert new.wait_durable_sync(new.append(["new"]), timeout=5)
    assert other.wait_durable_sync(other.append(["other"]), timeout=5)
    old.close()
    new.close()
    other.close()
    committer.close(timeout=5)
    assert ops(tmp_path / "s") == [["before"], ["new"]]



def _wait_written(log: WriteAheadLog, seq: int) -> None:
    deadline = time.monotonic() + 10
    while log._written_seq < seq and time.monotonic() < deadline:
        time.sleep(0.001)
    assert log._written_seq >= seq


def test_always_syncs_for_a_waiter_that_comes_after_the_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``always`` fsyncs a round's records only when someone waits for them
    (or the unawaited bound is up; here an hour). A waiter that arrives after
    the round that wrote its record starts a round of its own, threads and
    asyncio alike; nothing is acknowledged before its fsync."""
    monkeypatch.setattr("wheelsched.wal.log.UNAWAITED_SYNC_SECONDS", 3600.0)
    committer = Committer()
    log = opened(tmp_path / "a", committer, fsync="always")
    seq = log.append(["unawaited"])
    _wait_written(log, seq)
    time.sleep(0.05)  # the round is over: written, not synced, not durable
    assert log.durable_seq < seq and log.stats()["fsyncs"] == 0
    assert log.wait_durable_sync(seq, timeout=10)
    assert log.stats()["fsyncs"] == 1 and log._synced_seq >= seq

    async def main() -> None:
        seq = log.append(["awaited later"])
        await asyncio.sleep(0.05)
        await asyncio.wait_for(log.wait_durable(seq), 10)
        assert log._synced_seq >= seq

    asyncio.run(main())
    assert log.stats()["fsyncs"] == 2
    log.close()
    committer.close(timeout=5)
    assert ops(tmp_path / "a") == [["unawaited"], ["awaited later"]]


def test_always_syncs_unawaited_records_within_the_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rounds nobody waits for share one fsync when the bound is up, and
    then the records are durable with no waiter at all; a round with a
    waiter is synced at once and covers the unawaited records before it."""
    monkeypatch.setattr("wheelsched.wal.log.UNAWAITED_SYNC_SECONDS", 0.3)
    committer = Committer()
    log = opened(tmp_path / "a", committer, fsync="always")
    started = time.monotonic()
    last = 0
    for i in range(20):  # 20 rounds, each written before the next append
        last = log.append([i])
        _wait_written(log, last)
    if time.monotonic() - started < 0.25:  # the whole burst fit in the bound
        assert log.stats()["fsyncs"] == 0 and log.durable_seq < last
    deadline = time.monotonic() + 10
    while log.durable_seq < last and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.durable_seq == last and log._synced_seq == last
    assert 1 <= log.stats()["fsyncs"] <= (time.monotonic() - started) / 0.3 + 1
    fsyncs = log.stats()["fsyncs"]
    log.append(["unawaited"])
    seq = log.append(["awaited"])
    assert log.wait_durable_sync(seq, timeout=10)
    assert log._synced_seq == seq and log.stats()["fsyncs"] == fsyncs + 1
    log.close()
    committer.close(timeout=5)
    assert ops(tmp_path / "a") == [[i] for i in range(20)] + [["unawaited"], ["awaited"]]


def test_always_never_strands_a_waiter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiters racing the writer, with the unawaited bound out of reach:
    each must be woken by the fsync its own wait asked for."""
    monkeypatch.setattr("wheelsched.wal.log.UNAWAITED_SYNC_SECONDS", 3600.0)
    committer = Committer()
    logs = [opened(tmp_path / f"{i}", committer, fsync="always") for i in range(3)]
    stranded: list[int] = []

    def run(k: int) -> None:
        for i in range(300):
            log = logs[(k + i) % 3]
            seq = log.append([k, i])
            if i % 3 == 0:
                time.sleep(0.0005)  # sometimes after the round that wrote it
            if not log.wait_durable_sync(seq, timeout=10):
                stranded.append(seq)

    run_threads(run, 4)
    assert not stranded
    for log in logs:
        log.close()
    committer.close(timeout=5)


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_wait_all_resolves_when_every_log_is_durable(tmp_path: Path, fsync: str) -> None:
    """``Committer.wait_all`` (one future for a batch of logs) returns only
    when each log is durable through its seq, under many concurrent batches
    racing the writer; it raises for a seq never appended."""
    committer = Committer()
    logs = [opened(tmp_path / f"{i}", committer, fsync=fsync) for i in range(6)]

    async def main() -> None:
        async def batch(k: int) -> None:
            waits = {}
            for j, log in enumerate(logs):
                if (k + j) % 3:
                    waits[log] = log.append_many([[k, j, x] for x in range(k % 4 + 1)])
            if k % 5 == 0:
                await asyncio.sleep(0.001)  # sometimes after the round that wrote them
            await asyncio.wait_for(committer.wait_all(waits), 10)
            for log, seq in waits.items():
                assert log.durable_seq >= seq
                if fsync == "always":
                    assert log._synced_seq >= seq

        await asyncio.gather(*(batch(k) for k in range(400)))
        await committer.wait_all({log: log.durable_seq for log in logs})  # already durable
        with pytest.raises(WALError, match="never appended"):
            await committer.wait_all({logs[0]: logs[0].last_seq + 1})

    asyncio.run(main())
    for log in logs:
        log.close()
    committer.close(timeout=5)


def test_wait_all_raises_the_failed_logs_error(tmp_path: Path) -> None:
    committer = Committer()
    bad = opened(tmp_path / "bad", committer, Faults({"fsync": fail_fsync()}), fsync="always")
    good = opened(tmp_path / "good", committer, fsync="always")

    async def main() -> None:
        waits = {good: good.append(["ok"]), bad: bad.append(["doomed"])}
        with pytest.raises(LogFailedError, match="Input/output error"):
            await asyncio.wait_for(committer.wait_all(waits), 10)
        assert good.durable_seq >= waits[good] or good.wait_durable_sync(waits[good], timeout=10)
        with pytest.raises(LogFailedError):  # and later batches that include it
            await committer.wait_all({good: good.append(["ok"]), bad: 1})

    asyncio.run(main())
    bad.close()
    good.close()
    committer.close(timeout=5)


def test_unhurried_waiters_ride_on_the_next_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``urgent=False`` (per log or ``wait_all``) asks for no fsync: with the
    bound out of reach the waiters wait until an urgent waiter's fsync
    covers them, and then they are released with it, by the one fsync."""
    monkeypatch.setattr("wheelsched.wal.log.UNAWAITED_SYNC_SECONDS", 3600.0)
    committer = Committer()
    a = opened(tmp_path / "a", committer, fsync="always")
    b = opened(tmp_path / "b", committer, fsync="always")

    async def main() -> None:
        lazy_one = asyncio.ensure_future(a.wait_durable(a.append(["a1"]), urgent=False))
        lazy_all = asyncio.ensure_future(committer.wait_all({a: a.append(["a2"]), b: b.append(["b1"])},
                                                            urgent=False))
        await asyncio.sleep(0.2)  # rounds have written everything by now
        assert a._written_seq == 2 and b._written_seq == 1
        assert not lazy_one.done() and not lazy_all.done()
        assert a.stats()["fsyncs"] == 0 and b.stats()["fsyncs"] == 0
        await asyncio.wait_for(committer.wait_all({a: a.append(["a3"]), b: b.append(["b2"])}), 10)
        await asyncio.wait_for(asyncio.gather(lazy_one, lazy_all), 10)
        assert a.stats()["fsyncs"] == 1 and b.stats()["fsyncs"] == 1

    asyncio.run(main())
    a.close()
    b.close()
    committer.close(timeout=5)


def test_unhurried_waiters_are_answered_within_the_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("wheelsched.wal.log.UNAWAITED_SYNC_SECONDS", 0.2)
    committer = Committer()
    logs = [opened(tmp_path / f"{i}", committer, fsync="always") for i in range(3)]

    async def main() -> None:
        waits = {log: log.append([i]) for i, log in enumerate(logs)}
        await asyncio.wait_for(committer.wait_all(waits, urgent=False), 10)
        await asyncio.wait_for(logs[0].wait_durable(logs[0].append(["x"]), urgent=False), 10)
        for log in logs:
            assert log._synced_seq == log.last_seq

    asyncio.run(main())
    for log in logs:
        log.close()
    committer.close(timeout=5)
