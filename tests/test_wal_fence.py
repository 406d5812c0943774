"""Fencing (cluster mode): a deposed writer — paused past its lease, then
resumed — can neither corrupt nor extend the log its successor owns.

In-process takeovers use the writer's fault hooks to stop it at the exact
moments that matter (between its fence check and its write, before it links
a rolled segment, inside a snapshot); real processes are SIGSTOPped,
SIGCONTed and SIGKILLed at random and at those same points. The boundary
rule of the decoder is tested on hand-made segments."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from wal_helpers import HERE, Faults, replay_all, wal_impl_fixture

from wheelsched.cli import main as cli_main
from wheelsched.wal import (
    OP,
    SNAPSHOT,
    CorruptLogError,
    FencedError,
    LogFailedError,
    WALError,
    WALOptions,
    WriteAheadLog,
)
from wheelsched.wal.decoder import Recovery, list_dir
from wheelsched.wal.format import (
    FENCE_NAME,
    SEGMENT_MAGIC,
    T_OP,
    encode_file_header,
    frame,
    pack,
    segment_name,
)
from wheelsched.wal.repair import salvage

# every test runs on both record walks (C and pure Python; children inherit the choice)
wal_impl = wal_impl_fixture()


def fenced_log(d: Path, fence: str, *, faults: Faults | None = None, segment_bytes: int = 64 << 20,
               fsync: str = "never") -> WriteAheadLog:
    return WriteAheadLog(d, WALOptions(segment_bytes=segment_bytes, fsync=fsync),
                         meta={"fence": fence}, fence=fence, _faults=faults)


def take_over(d: Path, fence: str, **kw: Any) -> tuple[WriteAheadLog, list[Any]]:
    """What a new shard owner does: replay (installing its fence), then open."""
    log = fenced_log(d, fence, **kw)
    records = [tuple(r.payload) for r in log.replay()]
    log.open()
    return log, records


def append_durably(log: WriteAheadLog, payloads: list[Any]) -> list[int]:
    seqs = [log.append(p) for p in payloads]
    assert log.wait_durable_sync(seqs[-1], timeout=10)
    return seqs


def payloads(d: Path) -> list[tuple]:
    got = replay_all(d)
    assert [r.seq for r in got if r.kind == OP] == sorted({r.seq for r in got if r.kind == OP})
    return [tuple(r.payload) for r in got]


def segment_names(d: Path) -> list[str]:
    return [p.name for _, p in list_dir(d).segments]


# --------------------------------------------------------------------------- the API
def test_fence_token_is_validated(tmp_path: Path) -> None:
    for bad in ("", "  ", "1\nx"):
        with pytest.raises(ValueError):
            WriteAheadLog(tmp_path, fence=bad)
    assert issubclass(FencedError, LogFailedError)
    assert FencedError.status == "UNAVAILABLE"


def test_fence_file_holds_the_token(tmp_path: Path) -> None:
    log, _ = take_over(tmp_path, "7 node-a")
    assert (tmp_path / FENCE_NAME).read_text() == "7 node-a\n"
    log.check_fence()  # ours: no error
    assert not log.fenced and log.failed is None
    log.close()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_takeover_in_process(tmp_path: Path) -> None:
    a, _ = take_over(tmp_path, "1 a")
    append_durably(a, [("a", i) for i in range(10)])
    b = fenced_log(tmp_path, "2 b")
    assert [tuple(r.payload) for r in b.replay()] == [("a", i) for i in range(10)]
    # the deposed writer notices at its next batch
    seq = a.append(("a", 10))
    with pytest.raises(FencedError, match="taken over"):
        a.wait_durable_sync(seq, timeout=10)
    assert a.fenced and isinstance(a.failed, FencedError)
    with pytest.raises(FencedError):
        a.append(("a", 11))
    with pytest.raises(FencedError):
        a.append_many([("a", 12)])
    with pytest.raises(FencedError):
        a.snapshot([])
    with pytest.raises(FencedError):
        a.check_fence()
    assert a.wait_durable_sync(10)  # acknowledged before the takeover: still durable
    b.open()
    append_durably(b, [("b", i) for i in range(5)])
    a.close()
    b.close()
    assert payloads(tmp_path) == [("a", i) for i in range(10)] + [("b", i) for i in range(5)]
    assert segment_names(tmp_path) == [segment_name(1), segment_name(11)]
    assert Recovery(tmp_path).run().past_boundary == []


def test_asyncio_waiters_fail_with_fenced_error(tmp_path: Path) -> None:
    gate = threading.Event()
    faults = Faults({"write.before_write": lambda n: gate.wait(10) if n == 2 else None})
    a, _ = take_over(tmp_path, "1 a", faults=faults, fsync="always")
    append_durably(a, [("a", 0)])

    async def main() -> list[Any]:
        seqs = [a.append(("a", i)) for i in range(1, 50)]
        waits = asyncio.gather(*(a.wait_durable(s) for s in seqs), return_exceptions=True)
        await asyncio.sleep(0.05)  # the writer is held between its check and its write
        b = fenced_log(tmp_path, "2 b")
        list(b.replay())
        gate.set()
        results = await waits
        b.close()
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, FencedError) for r in results), results
    a.close()
    # b never opened, so no segment follows a's: the batch a wrote after b's
    # fence (never acknowledged) is simply the end of the log, and the next
    # owner takes it over like any record whose append failed
    assert payloads(tmp_path) == [("a", i) for i in range(50)]
    b, replayed = take_over(tmp_path, "3 b")
    b.close()
    assert payloads(tmp_path) == [("a", i) for i in range(50)] == replayed


def test_check_fence_by_the_owner(tmp_path: Path) -> None:
    a, _ = take_over(tmp_path, "1 a")
    append_durably(a, [("a", 0)])
    b, _ = take_over(tmp_path, "2 b")
    assert not a.fenced  # nobody has looked yet
    with pytest.raises(FencedError) as ei:
        a.check_fence()
    assert "'2 b'" in str(ei.value) and "'1 a'" in str(ei.value)
    assert a.fenced
    with pytest.raises(FencedError):
        a.append(("a", 1))
    a.close()  # writes nothing, raises nothing
    b.check_fence()
    append_durably(b, [("b", 0)])
    b.close()
    assert payloads(tmp_path) == [("a", 0), ("b", 0)]


def test_removed_fence_file_counts_as_deposed(tmp_path: Path) -> None:
    a, _ = take_over(tmp_path, "1 a")
    (tmp_path / FENCE_NAME).unlink()
    with pytest.raises(FencedError):
        a.wait_durable_sync(a.append(("a", 0)), timeout=10)
    a.close()


def test_deposed_between_replay_and_open(tmp_path: Path) -> None:
    a = fenced_log(tmp_path, "1 a")
    assert list(a.replay()) == []
    b, _ = take_over(tmp_path, "2 b")
    with pytest.raises(FencedError):
        a.check_fence()
    with pytest.raises(FencedError):
        a.open()
    assert segment_names(tmp_path) == [segment_name(1)]  # b's; a created nothing
    a.close()
    append_durably(b, [("b", 0)])
    b.close()
    assert payloads(tmp_path) == [("b", 0)]


# --------------------------------------------------------------------------- the deposed writer's last moves
def test_batch_written_before_the_takeover_is_not_acknowledged_after_it(tmp_path: Path) -> None:
    """Written and synced, then b takes over before a acknowledges: a's
    check before acknowledging fails it. b read those records: whether an
    unacknowledged record survives is open, an acknowledged one always does."""
    box: dict[str, Any] = {}

    def deposed_here(n: int) -> None:
        if n == 2:
            b = fenced_log(tmp_path, "2 b")
            box["replayed"] = [tuple(r.payload) for r in b.replay()]
            box["b"] = b

    a, _ = take_over(tmp_path, "1 a", fsync="always", faults=Faults({"write.after_write": deposed_here}))
    append_durably(a, [("a", 0)])
    seq = a.append(("a", 1))
    with pytest.raises(FencedError):
        a.wait_durable_sync(seq, timeout=10)
    assert a.durable_seq == 1
    assert box["replayed"] == [("a", 0), ("a", 1)]
    b = box["b"]
    b.open()
    append_durably(b, [("b", 0)])
    a.close()
    b.close()
    assert payloads(tmp_path) == [("a", 0), ("a", 1), ("b", 0)]


def test_late_batch_between_check_and_write_lands_past_the_boundary(tmp_path: Path) -> None:
    box: dict[str, Any] = {}

    def deposed_here(n: int) -> None:
        if n == 3:  # a's third batch: it has checked its fence, not written yet
            b = fenced_log(tmp_path, "2 b")
            box["replayed"] = [tuple(r.payload) for r in b.replay()]
            box["b"] = b

    a, _ = take_over(tmp_path, "1 a", faults=Faults({"write.before_write": deposed_here}))
    append_durably(a, [("a", 0)])
    append_durably(a, [("a", 1)])
    late = a.append_many([("a", i) for i in range(2, 7)])  # one batch, written after the takeover
    with pytest.raises(FencedError):
        a.wait_durable_sync(late, timeout=10)
    b = box["b"]
    assert box["replayed"] == [("a", 0), ("a", 1)]
    b.open()
    append_durably(b, [("b", i) for i in range(3)])
    a.close()
    b.close()
    assert payloads(tmp_path) == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2)]
    rec = Recovery(tmp_path).run()
    assert rec.fenced_records == 5 and rec.fenced_bytes > 0 and rec.tail is None
    (pb,) = rec.past_boundary
    assert pb.path.name == segment_name(1) and pb.size == pb.path.stat().st_size


def test_late_roll_cannot_link_after_a_takeover(tmp_path: Path) -> None:
    """a stalls after its fence check, right before linking its new segment;
    b takes over meanwhile and removes a's temp file: the link fails."""
    box: dict[str, Any] = {}

    def deposed_here(n: int) -> None:
        if n == 2:  # 1 is a's open(); 2 is its first roll
            box["b"], box["replayed"] = take_over(tmp_path, "2 b")

    a, _ = take_over(tmp_path, "1 a", segment_bytes=4096,
                     faults=Faults({"fence.before_install": deposed_here}))
    with pytest.raises(FencedError):
        for i in range(200):
            append_durably(a, [("a", i, "x" * 80)])
    assert a.fenced and isinstance(a.failed, FencedError)
    b = box["b"]
    append_durably(b, [("b", 0)])
    a.close()
    b.close()
    got = payloads(tmp_path)
    assert got == box["replayed"] + [("b", 0)]
    assert len(segment_names(tmp_path)) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_segment_linked_during_recovery_makes_open_refuse(tmp_path: Path) -> None:
    """b installs its fence and lists the directory while a is stalled right
    before linking a rolled segment; a then links it (and writes into it).
    b's open() sees a segment it did not replay and refuses; a fresh replay
    gives a continuous log that includes it."""
    box: dict[str, Any] = {}

    def deposed_here(n: int) -> None:
        if n == 2:
            b = fenced_log(tmp_path, "2 b", segment_bytes=4096)
            box["replayed"] = [tuple(r.payload) for r in b.replay()]
            box["b"] = b

    a, _ = take_over(tmp_path, "1 a", segment_bytes=4096,
                     faults=Faults({"fence.before_install": deposed_here}))
    with pytest.raises(FencedError):
        for i in range(200):
            append_durably(a, [("a", i, "x" * 80)])
    b = box["b"]
    with pytest.raises(WALError, match="segments changed"):
        b.open()
    b.close()
    a.close()
    assert len(segment_names(tmp_path)) == 2  # a's late segment is there
    c, replayed = take_over(tmp_path, "3 c")
    assert replayed[: len(box["replayed"])] == box["replayed"]
    append_durably(c, [("c", 0)])
    c.close()
    assert payloads(tmp_path) == [*replayed, ("c", 0)]


def test_empty_last_segment_is_replaced_not_reused(tmp_path: Path) -> None:
    a, _ = take_over(tmp_path, "1 a")
    append_durably(a, [("a", i) for i in range(3)])
    a.close()
    box: dict[str, Any] = {}

    def deposed_here(n: int) -> None:
        if n == 1:
            box["b"], box["replayed"] = take_over(tmp_path, "3 b")

    # a2 takes over and opens segment 4, which stays empty until b takes over
    a2, _ = take_over(tmp_path, "2 a2", faults=Faults({"write.before_write": deposed_here}))
    assert segment_names(tmp_path) == [segment_name(1), segment_name(4)]
    held = a2._fd
    with pytest.raises(FencedError):
        a2.wait_durable_sync(a2.append(("a2", 0)), timeout=10)
    # b replaced segment 4 by a rename: a2 wrote its late batch to an unlinked file
    assert os.fstat(held).st_nlink == 0
    assert os.fstat(held).st_ino != (tmp_path / segment_name(4)).stat().st_ino
    b = box["b"]
    append_durably(b, [("b", 0)])
    a2.close()
    b.close()
    assert box["replayed"] == [("a", 0), ("a", 1), ("a", 2)]
    assert payloads(tmp_path) == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    assert Recovery(tmp_path).run().past_boundary == []


def partial_record(seq: int) -> bytes:
    return frame(T_OP, seq, pack(["torn", seq, "x" * 40]))[:-7]


def test_torn_tail_of_an_empty_last_segment_is_kept_aside(tmp_path: Path) -> None:
    a, _ = take_over(tmp_path, "1 a")
    append_durably(a, [("a", 0)])
    a.close()
    a2, _ = take_over(tmp_path, "2 a2")  # segment 2, empty
    a2.close()
    seg2 = tmp_path / segment_name(2)
    header_size = seg2.stat().st_size
    with open(seg2, "ab") as f:
        f.write(partial_record(2))
    b, replayed = take_over(tmp_path, "3 b")
    assert replayed == [("a", 0)]
    assert (tmp_path / f"{segment_name(2)}.torn-{header_size}").read_bytes() == partial_record(2)
    append_durably(b, [("b", 0)])
    b.close()
    assert payloads(tmp_path) == [("a", 0), ("b", 0)]


def test_torn_tail_is_left_in_place_past_the_boundary(tmp_path: Path) -> None:
    a, _ = take_over(tmp_path, "1 a")
    append_durably(a, [("a", i) for i in range(3)])
    a.close()
    seg1 = tmp_path / segment_name(1)
    with open(seg1, "ab") as f:
        f.write(partial_record(4))
    size = seg1.stat().st_size
    b, replayed = take_over(tmp_path, "2 b")
    assert replayed == [("a", 0), ("a", 1), ("a", 2)]
    assert seg1.stat().st_size == size  # never truncated: its old writer may still hold it
    assert not list(tmp_path.glob("*.torn-*"))
    append_durably(b, [("b", 0)])
    b.close()
    assert payloads(tmp_path) == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    rec = Recovery(tmp_path).run()
    (pb,) = rec.past_boundary
    assert (pb.path, pb.size - pb.offset, pb.records) == (seg1, len(partial_record(4)), 0)


# --------------------------------------------------------------------------- snapshots
def snapshotting_writer(d: Path, point: str) -> tuple[WriteAheadLog, dict[str, Any], list[Any]]:
    box: dict[str, Any] = {}

    def deposed_here(n: int) -> None:
        if n == 1:
            b = fenced_log(d, "2 b")
            box["replayed"] = [tuple(r.payload) for r in b.replay()]
            box["b"] = b
            box["segments"] = segment_names(d)

    a, _ = take_over(d, "1 a", segment_bytes=4096, faults=Faults({point: deposed_here}))
    state = [("a", i, "x" * 60) for i in range(300)]
    for p in state:
        a.append(p)
    append_durably(a, [("a", 300, "")])
    state.append(("a", 300, ""))
    assert len(segment_names(d)) > 3
    assert a.snapshot(list(state))
    with pytest.raises(FencedError):
        a.wait_snapshot(30)
    assert a.fenced
    return a, box, state


def test_snapshot_of_a_deposed_writer_is_not_installed(tmp_path: Path) -> None:
    a, box, state = snapshotting_writer(tmp_path, "snapshot.after_write")
    assert not list_dir(tmp_path).snapshots and not list_dir(tmp_path).temps
    assert segment_names(tmp_path) == box["segments"]  # nothing deleted
    a.close()
    b = box["b"]
    b.open()
    append_durably(b, [("b", 0)])
    b.close()
    assert payloads(tmp_path) == [*state, ("b", 0)]


def test_deposed_writer_deletes_no_segment(tmp_path: Path) -> None:
    # taken over after a's snapshot and marker are durable, before a deletes what it covers
    a, box, state = snapshotting_writer(tmp_path, "snapshot.after_marker")
    assert len(list_dir(tmp_path).snapshots) == 1
    assert segment_names(tmp_path) == box["segments"]
    a.close()
    b = box["b"]
    b.open()  # the new owner may delete what the snapshot covers
    append_durably(b, [("b", 0)])
    b.close()
    got = replay_all(tmp_path)
    assert [tuple(r.payload) for r in got if r.kind == SNAPSHOT] == state
    assert [tuple(r.payload) for r in got if r.kind == OP] == [("b", 0)]


def test_late_snapshot_rename_is_consistent(tmp_path: Path) -> None:
    # a passed its check and stalls right before renaming the snapshot into
    # place; b's replay does not see it, the next replay uses it
    a, box, state = snapshotting_writer(tmp_path, "fence.before_snapshot_rename")
    assert len(list_dir(tmp_path).snapshots) == 1
    assert segment_names(tmp_path) == box["segments"]
    a.close()
    b = box["b"]
    assert box["replayed"] == state
    b.open()
    append_durably(b, [("b", 0)])
    b.close()
    got = replay_all(tmp_path)
    assert [tuple(r.payload) for r in got] == [*state, ("b", 0)]
    assert any(r.kind == SNAPSHOT for r in got)


# --------------------------------------------------------------------------- standalone mode
def test_standalone_mode_is_unchanged(tmp_path: Path) -> None:
    s1 = WriteAheadLog(tmp_path, WALOptions(fsync="never"))
    s1.open()
    append_durably(s1, [("s", 0)])
    with pytest.raises(WALError, match="in use by another process"):
        WriteAheadLog(tmp_path).open()
    # a fenced writer never shares a directory with a standalone one
    with pytest.raises(WALError, match="standalone"):
        list(fenced_log(tmp_path, "1 f").replay())
    assert not (tmp_path / FENCE_NAME).exists()
    s1.check_fence()  # no-op without a fence
    assert not s1.fenced
    s1.close()
    f, replayed = take_over(tmp_path, "1 f")
    assert replayed == [("s", 0)]
    with pytest.raises(WALError, match="in use by another process"):
        WriteAheadLog(tmp_path).open()
    f2, _ = take_over(tmp_path, "2 f")  # fenced writers do not lock each other out
    f.close()
    f2.close()
    s2 = WriteAheadLog(tmp_path, WALOptions(fsync="never"))
    assert [tuple(r.payload) for r in s2.replay()] == [("s", 0)]
    s2.open()
    append_durably(s2, [("s", 1)])
    s2.close()
    assert payloads(tmp_path) == [("s", 0), ("s", 1)]


# --------------------------------------------------------------------------- the boundary rule
def seg(first: int, records: list[tuple[int, Any]]) -> bytes:
    """A segment named ``first`` holding (seq, payload) records as given."""
    body = b"".join(frame(T_OP, seq, pack(p)) for seq, p in records)
    return encode_file_header(SEGMENT_MAGIC, first, {"t": 1}) + body


def old(seqs: range) -> list[tuple[int, Any]]:
    return [(s, ["old", s]) for s in seqs]


def new(seqs: range) -> list[tuple[int, Any]]:
    return [(s, ["new", s]) for s in seqs]


BOUNDARY_TAILS = {
    "late records": frame(T_OP, 8, pack(["late", 8])) + frame(T_OP, 9, pack(["late", 9])),
    "late records, torn": frame(T_OP, 8, pack(["late", 8])) + partial_record(9),
    "torn record": partial_record(8),
    "zeros": bytes(5000),
    "garbage": random.Random(3).randbytes(300),
    "stale duplicate": frame(T_OP, 3, pack(["old", 3])),
}


@pytest.mark.parametrize("case", sorted(BOUNDARY_TAILS))
def test_boundary_rule_ignores_what_follows_the_boundary(tmp_path: Path, case: str) -> None:
    tail = BOUNDARY_TAILS[case]
    (tmp_path / segment_name(1)).write_bytes(seg(1, old(range(1, 8))) + tail)
    (tmp_path / segment_name(8)).write_bytes(seg(8, new(range(8, 11))))
    rec = Recovery(tmp_path)
    got = [(r.seq, r.payload) for r in rec.records()]
    assert got == [(s, ["old", s]) for s in range(1, 8)] + [(s, ["new", s]) for s in range(8, 11)]
    assert rec.tail is None and rec.last_seq == 10
    (pb,) = rec.past_boundary
    assert pb.size - pb.offset == len(tail) == rec.fenced_bytes
    want_records = {"late records": 2, "late records, torn": 1, "stale duplicate": 1}
    assert rec.fenced_records == want_records.get(case, 0)
    # opening (standalone here) works and continues the log
    log = WriteAheadLog(tmp_path, WALOptions(fsync="never"), meta={"t": 1})
    log.open()
    assert log.append(["new", 11]) == 11
    log.close()
    assert [r.seq for r in replay_all(tmp_path)] == list(range(1, 12))


def test_boundary_rule_in_a_middle_segment_and_with_a_snapshot(tmp_path: Path) -> None:
    (tmp_path / segment_name(1)).write_bytes(seg(1, old(range(1, 5))) + bytes(100))
    (tmp_path / segment_name(5)).write_bytes(seg(5, old(range(5, 12))) + seg(0, [])[:3])
    (tmp_path / segment_name(9)).write_bytes(seg(9, new(range(9, 13))))
    rec = Recovery(tmp_path)
    got = [r.payload for r in rec.records()]
    assert got == [["old", s] for s in range(1, 9)] + [["new", s] for s in range(9, 13)]
    assert [p.path.name for p in rec.past_boundary] == [segment_name(1), segment_name(5)]
    assert rec.past_boundary[1].records == 3  # seqs 9..11 of the older writer


@pytest.mark.parametrize(
    "case", ["flip before the boundary", "short of the boundary", "gap before the boundary", "bad header"]
)
def test_damage_before_the_boundary_is_still_corruption(tmp_path: Path, case: str) -> None:
    first = seg(1, old(range(1, 11)))
    if case == "flip before the boundary":
        data = bytearray(first)
        data[len(seg(1, old(range(1, 5)))) + 20] ^= 0x10  # inside record 5
        first = bytes(data)
        where = len(seg(1, old(range(1, 5))))
    elif case == "short of the boundary":
        first = seg(1, old(range(1, 6)))
    elif case == "gap before the boundary":
        first = seg(1, old(range(1, 5))) + frame(T_OP, 6, pack(["old", 6]))
        where = len(seg(1, old(range(1, 5))))
    else:
        first = b"X" + first[1:]
        where = 0
    (tmp_path / segment_name(1)).write_bytes(first)
    (tmp_path / segment_name(8)).write_bytes(seg(8, new(range(8, 11))))
    with pytest.raises(CorruptLogError) as ei:
        list(Recovery(tmp_path).records())
    if case == "short of the boundary":
        assert "missing segment" in str(ei.value) and segment_name(8) in str(ei.value)
    else:
        assert ei.value.path.endswith(segment_name(1)) and ei.value.offset == where


def test_verify_and_salvage_with_a_late_tail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / segment_name(1)).write_bytes(seg(1, old(range(1, 8))) + BOUNDARY_TAILS["late records"])
    (tmp_path / segment_name(8)).write_bytes(seg(8, new(range(8, 11))))
    assert cli_main(["wal", "verify", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "last seq 10" in out
    assert f"fenced: {tmp_path / segment_name(1)}" in out and "(2 CRC-valid record(s))" in out
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    report = salvage(tmp_path)
    assert report["problem"] is None and report["kept_last_seq"] == 10 and "directory" not in report
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# --------------------------------------------------------------------------- real processes
class FencedChild:
    """``wal_helpers.py fenced``: appends with fsync=always from 8 tasks and
    reports every durable seq; stops at the first FencedError."""

    def __init__(self, d: Path, fence: str, tag: str, *, segment_bytes: int = 16384,
                 stop_point: str = "", stop_nth: int = 0) -> None:
        env = dict(os.environ, PYTHONPATH=str(HERE.parent.parent))
        args = [sys.executable, str(HERE), "fenced", str(d), fence, tag, str(segment_bytes),
                stop_point, str(stop_nth)]
        self.tag = tag
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, text=True)
        self._lock = threading.Lock()
        self._acked: dict[int, tuple] = {}
        self.fenced_line = ""
        self.done_line = ""
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.ready.wait(20):
            self.proc.kill()
            pytest.fail(f"child never got ready: {self.proc.stderr.read() if self.proc.stderr else ''}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "READY":
                self.ready.set()
            elif parts[0] == "ACK":
                with self._lock:
                    self._acked[int(parts[1])] = (self.tag, int(parts[2]))
            elif parts[0] == "FENCED":
                self.fenced_line = line.strip()
            elif parts[0] == "DONE":
                self.done_line = line.strip()

    def acked(self) -> dict[int, tuple]:
        with self._lock:
            return dict(self._acked)

    def is_stopped(self) -> bool:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"

    def wait_stopped(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_stopped():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"child did not stop: {self.proc.stderr.read() if self.proc.stderr else ''}")
            time.sleep(0.005)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)
        self.wait_stopped()

    def resume_and_wait_fenced(self, timeout: float = 30) -> None:
        self.proc.send_signal(signal.SIGCONT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail("the deposed child did not stop appending")
        self._reader.join(5)
        err = self.proc.stderr.read() if self.proc.stderr else ""
        assert self.proc.returncode == 0, err
        assert self.fenced_line.startswith("FENCED FencedError"), (self.fenced_line, err)
        assert self.done_line == "DONE fenced=True", (self.done_line, err)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)


def check_takeover(d: Path, child: FencedChild, replayed: list[tuple], mine: list[tuple]) -> None:
    """Every seq the child ever acknowledged is in what the new owner
    replayed; the log is exactly that plus the new owner's records: nothing
    the deposed child wrote after the takeover."""
    got = replay_all(d)
    ops = {r.seq: tuple(r.payload) for r in got if r.kind == OP}
    acked = child.acked()
    assert acked, "the child acknowledged nothing"
    assert set(acked.values()) <= set(replayed), "an acknowledged record is missing after the takeover"
    for seq, payload in acked.items():
        assert ops.get(seq) == payload
    assert [tuple(r.payload) for r in got] == replayed + mine
    assert [r.seq for r in got] == list(range(got[0].seq, got[-1].seq + 1))


def test_sigstopped_leader_is_fenced_after_takeover(tmp_path: Path) -> None:
    rng = random.Random(2024)
    for r in range(6):
        child = FencedChild(tmp_path, f"{2 * r + 1} child", f"c{r}")
        time.sleep(rng.uniform(0.05, 0.4))
        child.stop()
        new_owner, replayed = take_over(tmp_path, f"{2 * r + 2} test", fsync="always")
        mine = [(f"t{r}", i) for i in range(rng.randrange(1, 60))]
        append_durably(new_owner, mine)
        child.resume_and_wait_fenced()
        new_owner.close()
        check_takeover(tmp_path, child, replayed, mine)


def test_stopped_between_fence_check_and_write(tmp_path: Path) -> None:
    """The child stops itself right after a batch passed its fence check;
    after the takeover it writes that batch into its old segment."""
    child = FencedChild(tmp_path, "1 child", "c", segment_bytes=64 << 20,
                        stop_point="write.before_write", stop_nth=40)
    child.wait_stopped()
    new_owner, replayed = take_over(tmp_path, "2 test", fsync="always")
    mine = [("t", i) for i in range(20)]
    append_durably(new_owner, mine)
    child.resume_and_wait_fenced()
    new_owner.close()
    check_takeover(tmp_path, child, replayed, mine)
    rec = Recovery(tmp_path).run()
    assert rec.fenced_records >= 1  # the late batch, past the boundary


def test_stopped_before_linking_a_rolled_segment(tmp_path: Path) -> None:
    child = FencedChild(tmp_path, "1 child", "c", segment_bytes=4096,
                        stop_point="fence.before_install", stop_nth=3)
    child.wait_stopped()
    new_owner, replayed = take_over(tmp_path, "2 test", fsync="always")
    mine = [("t", i) for i in range(20)]
    append_durably(new_owner, mine)
    child.resume_and_wait_fenced()
    new_owner.close()
    check_takeover(tmp_path, child, replayed, mine)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_sigkilled_leader_torn_tail_then_takeover(tmp_path: Path) -> None:
    rng = random.Random(99)
    for r in range(3):
        child = FencedChild(tmp_path, f"{2 * r + 1} child", f"k{r}")
        time.sleep(rng.uniform(0.05, 0.3))
        child.kill()
        last = list_dir(tmp_path).segments[-1][1]
        if r != 1:  # what a write cut short by the kill leaves behind
            with open(last, "ab") as f:
                f.write(partial_record(10**6))
        new_owner, replayed = take_over(tmp_path, f"{2 * r + 2} test", fsync="always")
        mine = [(f"t{r}", i) for i in range(rng.randrange(1, 40))]
        append_durably(new_owner, mine)
        new_owner.close()
        check_takeover(tmp_path, child, replayed, mine)
    assert cli_main(["wal", "verify", str(tmp_path)]) == 0
