"""Group commit (asyncio and threads), fsync failure, snapshots, CLI, and a
Hypothesis model test of append / append_many / snapshot / reopen."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wal_helpers import Faults, fail_fsync, rebuild_state, replay_all, run_threads, wal_impl_fixture

from wheelsched.cli import main as cli_main
from wheelsched.errors import WheelschedError
from wheelsched.wal import (
    OP,
    SNAPSHOT,
    CorruptLogError,
    LogFailedError,
    WALError,
    WALOptions,
    WriteAheadLog,
)
from wheelsched.wal.decoder import list_dir

# every test runs on both record walks (C and pure Python; children inherit the choice)
wal_impl = wal_impl_fixture()


def opened(d: Path, **kw: Any) -> WriteAheadLog:
    faults = kw.pop("faults", None)
    log = WriteAheadLog(d, WALOptions(**kw), meta={"shard": 1}, _faults=faults)
    log.open()
    return log


def test_error_hierarchy() -> None:
    assert issubclass(WALError, WheelschedError)
    assert issubclass(CorruptLogError, WALError) and issubclass(LogFailedError, WALError)
    assert LogFailedError.status == "UNAVAILABLE"
    e = CorruptLogError("/x/1.wal", 42, "checksum mismatch")
    assert (e.path, e.offset, e.reason) == ("/x/1.wal", 42, "checksum mismatch")
    assert "/x/1.wal" in str(e) and "42" in str(e)


def test_asyncio_group_commit(tmp_path: Path) -> None:
    faults = Faults()
    log = opened(tmp_path, fsync="always", faults=faults)
    wakeups = 0

    async def main() -> None:
        nonlocal wakeups
        loop = asyncio.get_running_loop()
        orig = loop.call_soon_threadsafe

        def counting(*a: Any, **k: Any) -> Any:
            nonlocal wakeups
            wakeups += 1
            return orig(*a, **k)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]

        async def appender(k: int) -> None:
            for i in range(25):
                seq = log.append({"k": k, "i": i})
                await log.wait_durable(seq)
                assert log.durable_seq >= seq

        await asyncio.gather(*(appender(k) for k in range(200)))

    asyncio.run(main())
    fsyncs = faults.hits.get("fsync", 0)
    log.close()
    assert log.last_seq == 5000
    assert fsyncs < 5000 / 5, fsyncs  # batched
    assert wakeups <= fsyncs + 1, (wakeups, fsyncs)  # one loop wake-up per batch at most
    assert len(replay_all(tmp_path)) == 5000


def test_threaded_group_commit(tmp_path: Path) -> None:
    faults = Faults()
    log = opened(tmp_path, fsync="always", faults=faults)
    errors: list[BaseException] = []

    def appender(k: int) -> None:
        try:
            for i in range(50):
                seq = log.append([k, i])
                assert log.wait_durable_sync(seq, timeout=30)
                assert log.durable_seq >= seq
        except BaseException as exc:
            errors.append(exc)

    run_threads(appender, 16)
    log.close()
    assert not errors
    assert faults.hits["fsync"] < 800
    got = replay_all(tmp_path)
    assert sorted(r.payload for r in got) == sorted([k, i] for k in range(16) for i in range(50))


def test_each_thread_packs_with_its_own_packer_which_survives_a_bad_payload() -> None:
    """The encoder is kept per thread (a msgpack Packer is not thread-safe),
    and a payload it cannot encode leaves nothing behind in it."""
    import msgpack

    from wheelsched.wal.format import pack, packer

    mine = packer()
    assert packer() is mine
    theirs: list[Any] = []
    t = threading.Thread(target=lambda: theirs.append(packer()))
    t.start()
    t.join()
    assert theirs[0] is not mine
    with pytest.raises(TypeError):
        pack([1, "half written", object()])
    assert msgpack.unpackb(pack([2, "job", b"\x00", 1.5, None])) == [2, "job", b"\x00", 1.5, None]


def test_append_many_and_policies(tmp_path: Path) -> None:
    for policy in ("always", "interval:5", "never"):
        d = tmp_path / policy.replace(":", "_")
        log = opened(d, fsync=policy)
        last = log.append_many([("x", i) for i in range(1000)])
        assert last == 1000
        assert log.wait_durable_sync(last, timeout=10)
        assert log.append_many([]) == 1000
        log.close()
        got = replay_all(d)
        assert [r.seq for r in got] == list(range(1, 1001))
        assert got[5].payload == ["x", 5]


def test_interval_policy_fsyncs_eventually(tmp_path: Path) -> None:
    faults = Faults()
    log = opened(tmp_path, fsync="interval:20", faults=faults)
    seq = log.append("a")
    assert log.wait_durable_sync(seq, timeout=5)
    deadline = threading.Event()
    deadline.wait(0.2)
    assert faults.hits.get("fsync", 0) >= 1
    log.close()


def test_fsync_error_is_fatal(tmp_path: Path) -> None:
    faults = Faults({"fsync": fail_fsync(after=1)})
    log = opened(tmp_path, fsync="always", faults=faults)
    ok = log.append("fine")
    assert log.wait_durable_sync(ok, timeout=5)

    async def main() -> None:
        seqs = [log.append(i) for i in range(10)]
        results = await asyncio.gather(*(log.wait_durable(s) for s in seqs), return_exceptions=True)
        assert all(isinstance(r, LogFailedError) for r in results), results

    asyncio.run(main())
    assert isinstance(log.failed, LogFailedError)
    assert isinstance(log.failed.__cause__, OSError)
    assert "Input/output error" in str(log.failed)
    with pytest.raises(LogFailedError) as ei:
        log.append("later")
    assert isinstance(ei.value.__cause__, OSError)
    with pytest.raises(LogFailedError):
        log.wait_durable_sync(ok + 1)
    assert log.wait_durable_sync(ok)  # what was durable stays durable
    log.close()
    assert faults.hits["fsync"] == 2  # never retried
    closed = opened(tmp_path / "b")
    closed.close()
    with pytest.raises(LogFailedError, match="closed"):
        closed.append(1)


def test_snapshot_and_replay(tmp_path: Path) -> None:
    log = opened(tmp_path, fsync="never", segment_bytes=4096, snapshot_every_records=100)
    state = []
    for i in range(500):
        log.append(("op", i))
        state.append(("op", i))
    assert log.snapshot_due()
    assert log.snapshot(list(state)) is True
    assert log.snapshot(list(state)) in (False, True)  # at most one in flight
    assert log.wait_snapshot(timeout=30)
    assert not log.snapshot_due()
    for i in range(500, 520):
        log.append(("op", i))
        state.append(("op", i))
    log.close()
    layout = list_dir(tmp_path)
    assert len(layout.snapshots) == 1
    assert layout.segments[0][0] > 1  # covered segments were deleted
    got = replay_all(tmp_path)
    snaps = [r for r in got if r.kind == SNAPSHOT]
    assert len(snaps) == 500 and all(r.seq == 500 for r in snaps)
    ops = [r for r in got if r.kind == OP]
    assert [r.payload for r in ops] == [["op", i] for i in range(500, 520)]
    assert ops[0].seq == 502  # 501 is the snapshot marker
    assert rebuild_state(got) == [["op", i] for i in range(520)]


def test_second_snapshot_replaces_first(tmp_path: Path) -> None:
    log = opened(tmp_path, fsync="never", segment_bytes=4096)
    state: list[Any] = []
    for round_ in range(3):
        for i in range(300):
            log.append((round_, i))
            state.append((round_, i))
        assert log.snapshot(list(state))
        log.wait_snapshot(30)
    log.close()
    assert len(list_dir(tmp_path).snapshots) == 1
    assert rebuild_state(replay_all(tmp_path)) == [list(x) for x in state]


def test_cli_verify_dump_salvage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = opened(tmp_path, fsync="never", segment_bytes=4096)
    for i in range(600):
        log.append({"i": i, "b": b"\x00\x01"})
    log.close()
    assert cli_main(["wal", "verify", str(tmp_path)]) == 0
    assert cli_main(["wal", "dump", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("600\top\t") and '"i":599' in lines[-1]
    assert len([line for line in lines if "\top\t" in line]) == 600

    segs = list_dir(tmp_path).segments
    last = segs[-1][1]
    with open(last, "ab") as f:
        f.write(b"\x07" * 5)  # torn tail
    assert cli_main(["wal", "verify", str(tmp_path)]) == 3

    mid = segs[2][1]
    data = bytearray(mid.read_bytes())
    data[200] ^= 0xFF
    mid.write_bytes(data)
    assert cli_main(["wal", "verify", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert mid.name in err and "offset" in err

    assert cli_main(["wal", "salvage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "salvaged-" in out
    assert cli_main(["wal", "verify", str(tmp_path)]) == 0
    got = replay_all(tmp_path)
    assert got and [r.seq for r in got] == list(range(1, len(got) + 1)) and len(got) < 600
    aside = next(tmp_path.glob("salvaged-*"))
    assert (aside / "readable-after-gap.msgpack").exists()
    log = opened(tmp_path, fsync="never")
    assert log.append("after salvage") == len(got) + 1
    log.close()


# ------------------------------------------------------------------ hypothesis

payloads = st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=30), st.binary(max_size=300),
                     st.lists(st.integers(0, 1000), max_size=5))
actions = st.lists(
    st.one_of(
        st.tuples(st.just("append"), payloads),
        st.tuples(st.just("many"), st.lists(payloads, max_size=40)),
        st.tuples(st.just("snapshot"), st.none()),
        st.tuples(st.just("reopen"), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions)
def test_model(tmp_path_factory: pytest.TempPathFactory, acts: list[tuple[str, Any]]) -> None:
    d = tmp_path_factory.mktemp("model")
    opts = WALOptions(fsync="never", segment_bytes=4096)
    model: list[Any] = []  # every payload appended, in order
    seqs: list[int] = []
    log = WriteAheadLog(d, opts)
    log.open()
    try:
        for kind, arg in acts:
            if kind == "append":
                seqs.append(log.append(arg))
                model.append(arg)
            elif kind == "many":
                before = log.last_seq
                last = log.append_many(arg)
                assert last == before + len(arg)
                seqs.extend(range(before + 1, last + 1))
                model.extend(arg)
            elif kind == "snapshot":
                assert log.snapshot(list(model))
                log.wait_snapshot(30)
            else:
                log.close()
                log = WriteAheadLog(d, opts)
                got = list(log.replay())
                assert rebuild_state(got) == _normalise(model)
                ops = [r.seq for r in got if r.kind == OP]
                assert ops == seqs[len(seqs) - len(ops):]
                log.open()
            assert seqs == sorted(set(seqs))
    finally:
        log.close()
    assert rebuild_state(replay_all(d)) == _normalise(model)


def _normalise(items: list[Any]) -> list[Any]:
    # msgpack turns tuples into lists
    return [list(x) if isinstance(x, tuple) else x for x in items]
