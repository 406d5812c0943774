"""The C record walk (csrc/walscan.c via wheelsched.wal._scan_c) against the
pure-Python reference: its CRC32C against the ``crc32c`` package, and whole
recoveries of randomly damaged segments and snapshots, which must give the
same records, the same torn tail or the same error, byte for byte."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from crc32c import crc32c
from wal_helpers import HERE, PURE

from wheelsched.wal import OP, SNAPSHOT, CorruptLogError, WALOptions, WriteAheadLog, decoder
from wheelsched.wal.decoder import Recovery, read_snapshot
from wheelsched.wal.format import (
    SEGMENT_MAGIC,
    SNAPSHOT_MAGIC,
    T_OP,
    T_SNAPSHOT_END,
    T_SNAPSHOT_ITEM,
    T_SNAPSHOT_MARKER,
    encode_file_header,
    frame,
    pack,
    segment_name,
    snapshot_name,
)

needs_c = pytest.mark.skipif(PURE, reason="WHEELSCHED_PURE_PYTHON is set")


def implementation_in_fresh_process(pure: str | None) -> str:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent.parent))
    env.pop("WHEELSCHED_PURE_PYTHON", None)
    if pure is not None:
        env["WHEELSCHED_PURE_PYTHON"] = pure
    out = subprocess.run(
        [sys.executable, "-c", "from wheelsched.wal import decoder; print(decoder.IMPLEMENTATION)"],
        env=env, capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


@needs_c
def test_c_walk_is_built_and_chosen() -> None:
    """Fails when the extension is missing (and WHEELSCHED_PURE_PYTHON is
    unset): replay would silently run 3-5x slower on the Python walk."""
    import wheelsched.wal._scan_c  # noqa: F401

    assert implementation_in_fresh_process(None) == "c"
    assert implementation_in_fresh_process("0") == "c"
    assert implementation_in_fresh_process("1") == "python"


# --------------------------------------------------------------------------- framing
def frame_into_impls() -> list[Any]:
    from wheelsched.wal import format as fmt

    impls = [fmt._frame_into_py]
    if not PURE:
        from wheelsched.wal import _scan_c

        assert fmt.FRAME_IMPLEMENTATION == "c" and fmt.frame_into is _scan_c.frame_into
        impls.append(_scan_c.frame_into)
    else:
        assert fmt.FRAME_IMPLEMENTATION == "python"
    return impls


def test_frame_into_builds_the_frames_frame_builds() -> None:
    """Both implementations of the writer's framing give, byte for byte,
    the records ``frame`` gives (which the decoders read), and count their
    bytes."""
    rng = random.Random(7)
    for _ in range(300):
        payloads = [rng.randbytes(rng.choice((0, 1, 15, 16, 17, rng.randrange(2000))))
                    for _ in range(rng.randrange(0, 8))]
        last = rng.choice((0, 1, rng.randrange(1 << 40), (1 << 56) - 1 - len(payloads)))
        rtype = rng.randrange(256)
        want = [frame(rtype, last + 1 + i, p) for i, p in enumerate(payloads)]
        for impl in frame_into_impls():
            frames = [b"kept"]
            assert impl(frames, payloads, last, rtype) == sum(map(len, want))
            assert frames == [b"kept", *want]


@pytest.mark.parametrize("payloads,last,rtype,error", [
    ([b"ok", "text"], 0, T_OP, TypeError),
    ([b"ok", 5], 0, T_OP, TypeError),
    ([b"ok", None], 0, T_OP, TypeError),
    ([b"ok", bytearray(b"ok")], 0, T_OP, TypeError),
    ([b"ok"], 0, 256, ValueError),
    ([b"ok"], 0, -1, ValueError),
    ([b"ok"], -1, T_OP, ValueError),
    ([b"ok", b"ok"], (1 << 56) - 2, T_OP, ValueError),
])
def test_frame_into_refuses_bad_input_and_appends_nothing(
        payloads: list[Any], last: int, rtype: int, error: type[Exception]) -> None:
    for impl in frame_into_impls():
        frames = [b"kept"]
        with pytest.raises(error):
            impl(frames, payloads, last, rtype)
        assert frames == [b"kept"]


# --------------------------------------------------------------------------- CRC32C
@needs_c
def test_crc32c_matches_the_crc32c_package() -> None:
    from wheelsched.wal import _scan_c

    rng = random.Random(1)
    blob = rng.randbytes(1 << 16)
    impls = [_scan_c.crc32c, _scan_c.crc32c_sw]
    if _scan_c.HW_CRC_AVAILABLE:
        impls.append(_scan_c.crc32c_hw)
    else:  # pragma: no cover - depends on the CPU
        with pytest.raises(RuntimeError):
            _scan_c.crc32c_hw(b"x")
    cases = [b"", b"\x00", b"123456789", bytes(64), b"\xff" * 33, blob]
    cases += [blob[o : o + n] for o in range(8) for n in range(0, 40)]  # every alignment and tail length
    cases += [rng.randbytes(rng.randrange(1, 5000)) for _ in range(300)]
    for data in cases:
        want = crc32c(data)
        for f in impls:
            assert f(data) == want, (f.__name__, len(data))
            assert f(memoryview(data)) == want
        if len(data) > 3:  # chaining, the way the crc32c package's `value` works
            cut = len(data) // 3
            for f in impls:
                assert f(data[cut:], f(data[:cut])) == want
    assert _scan_c.crc32c(b"123456789") == 0xE3069283  # the standard check value


# --------------------------------------------------------------------------- differential
def seg_bytes(first: int, records: list[tuple[int, Any]], meta: Any = None) -> bytes:
    out = [encode_file_header(SEGMENT_MAGIC, first, meta or {"t": 1})]
    for i, (rtype, payload) in enumerate(records):
        raw = payload if isinstance(payload, bytes) else pack(payload)
        out.append(frame(rtype, first + i, raw))
    return b"".join(out)


def random_records(rng: random.Random, n: int) -> list[tuple[int, Any]]:
    recs: list[tuple[int, Any]] = []
    for i in range(n):
        r = rng.random()
        if r < 0.05:
            recs.append((T_SNAPSHOT_MARKER, {"covers": i, "file": "x.snap"}))
        elif r < 0.08:
            recs.append((rng.choice([5, 9, 200, 255]), ["future", i]))  # unknown: skipped
        else:
            recs.append((T_OP, ["op", i, rng.randbytes(rng.randrange(0, 60)), {"k": i}]))
    return recs


def damage(rng: random.Random, data: bytes, header: int) -> bytes:
    b = bytearray(data)
    what = rng.randrange(6)
    if len(b) <= header and what in (1, 2):  # no records to damage
        what = 3
    if what == 0:  # torn write
        del b[rng.randrange(header, len(b) + 1) :]
    elif what == 1:  # bit rot
        for _ in range(rng.randrange(1, 3)):
            b[rng.randrange(header, len(b))] ^= 1 << rng.randrange(8)
    elif what == 2:  # a zeroed block
        at = rng.randrange(header, len(b))
        n = rng.randrange(1, 600)
        b[at : at + n] = bytes(len(b[at : at + n]))
    elif what == 3:  # preallocated tail
        b += bytes(rng.randrange(1, 5000))
    elif what == 4:  # garbage tail
        b += rng.randbytes(rng.randrange(1, 100))
    # 5: undamaged
    return bytes(b)


def outcome(d: Path, impl: str, batches: bool = False) -> Any:
    decoder.use_implementation(impl)
    try:
        rec = Recovery(d)
        if batches:
            got: Any = [(k, f, list(p)) for k, f, p in rec.batches()]
        else:
            got = list(rec.records())
        return ("ok", got, rec.tail, rec.last_seq, rec.tail_end, rec.covered, rec.past_boundary)
    except CorruptLogError as exc:
        return ("error", str(exc), exc.offset)


@pytest.fixture
def restore_impl() -> Any:
    previous = decoder.IMPLEMENTATION
    yield
    decoder.use_implementation(previous)


def walks() -> list[tuple[str, bool]]:
    """(implementation, hardware CRC) pairs to compare with the reference."""
    from wheelsched.wal import _scan_c

    pairs = [("c", False)]
    if _scan_c.HW_CRC_AVAILABLE:
        pairs.append(("c", True))
    return pairs


def compare_all(d: Path, label: Any, batches: bool = False) -> Any:
    from wheelsched.wal import _scan_c

    want = outcome(d, "python", batches)
    hw = _scan_c.hardware_crc()
    try:
        for impl, use_hw in walks():
            _scan_c.use_hardware_crc(use_hw)
            assert outcome(d, impl, batches) == want, (label, use_hw)
    finally:
        _scan_c.use_hardware_crc(hw)
    return want


@needs_c
def test_damaged_segments_same_result_as_reference(
    tmp_path: Path, restore_impl: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(7)
    seen = set()
    for it in range(250):
        # small chunks too: the C walk compacts each chunk's payloads in place
        monkeypatch.setattr(decoder, "PROGRESS_EVERY", rng.choice([1, 3, 7, 100_000]))
        d = tmp_path / f"d{it}"
        d.mkdir()
        n_segs = rng.choice([1, 1, 2, 3])
        first = 1
        files = []
        for _ in range(n_segs):
            recs = random_records(rng, rng.randrange(0, 40))
            files.append((first, seg_bytes(first, recs)))
            first += len(recs)
        victim = rng.randrange(len(files))
        f0, data = files[victim]
        hdr = len(encode_file_header(SEGMENT_MAGIC, f0, {"t": 1}))
        files[victim] = (f0, damage(rng, data, hdr))
        for f, data in files:
            (d / segment_name(f)).write_bytes(data)
        want = compare_all(d, it)
        compare_all(d, it, batches=True)
        seen.add(want[0] if want[0] == "error" else ("tail" if want[2] else "clean"))
    assert seen == {"clean", "tail", "error"}, seen  # every kind of outcome was exercised


def late_tail(rng: random.Random, next_first: int) -> bytes:
    """What can follow a segment's boundary: a deposed writer's late records
    (seqs from the next segment's first on), torn, zeros, garbage."""
    what = rng.randrange(5)
    late = b"".join(frame(rtype, next_first + i, pack(p))
                    for i, (rtype, p) in enumerate(random_records(rng, rng.randrange(1, 6))))
    if what == 0:
        return late
    if what == 1:
        return late[: rng.randrange(1, len(late))]
    if what == 2:
        return bytes(rng.randrange(1, 3000))
    if what == 3:
        return rng.randbytes(rng.randrange(1, 200))
    return late + bytes(rng.randrange(1, 100))


@needs_c
def test_late_tails_same_result_as_reference(
    tmp_path: Path, restore_impl: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The boundary rule in both walks: bytes after the record before the
    next segment's first are ignored (and reported alike); damage before it
    is still an error."""
    rng = random.Random(17)
    seen = set()
    for it in range(200):
        monkeypatch.setattr(decoder, "PROGRESS_EVERY", rng.choice([1, 2, 5, 100_000]))
        d = tmp_path / f"d{it}"
        d.mkdir()
        n_segs = rng.choice([2, 2, 3, 4])
        first = 1
        files = []
        for _ in range(n_segs):
            recs = random_records(rng, rng.randrange(1, 30))
            files.append((first, seg_bytes(first, recs)))
            first += len(recs)
        for i in range(n_segs - 1):
            if rng.random() < 0.7:
                f0, data = files[i]
                files[i] = (f0, data + late_tail(rng, files[i + 1][0]))
        if rng.random() < 0.3:  # and sometimes damage anywhere, before a boundary too
            victim = rng.randrange(n_segs)
            f0, data = files[victim]
            hdr = len(encode_file_header(SEGMENT_MAGIC, f0, {"t": 1}))
            files[victim] = (f0, damage(rng, data, hdr))
        for f, data in files:
            (d / segment_name(f)).write_bytes(data)
        want = compare_all(d, it)
        compare_all(d, it, batches=True)
        seen.add("error" if want[0] == "error" else ("past boundary" if want[6] else "clean"))
    assert seen == {"clean", "past boundary", "error"}, seen


@needs_c
def test_sequence_gap_and_bad_payloads_same_as_reference(tmp_path: Path, restore_impl: Any) -> None:
    cases = {
        "gap": seg_bytes(1, [(T_OP, 1), (T_OP, 2)]) + frame(T_OP, 9, pack(3)),
        "undecodable": seg_bytes(1, [(T_OP, 1), (T_OP, b"\xc1"), (T_OP, 3)]),
        "two objects": seg_bytes(1, [(T_OP, 1), (T_OP, pack(2) + pack(3)), (T_OP, 4)]),
        "half an object": seg_bytes(1, [(T_OP, 1), (T_OP, b"\x92\x01"), (T_OP, 4)]),
        "trailing incomplete": seg_bytes(1, [(T_OP, 1), (T_OP, b"\x01\x92")]),
        "empty payload": seg_bytes(1, [(T_OP, 1), (T_OP, b""), (T_OP, 4)]),
        "only markers": seg_bytes(1, [(T_SNAPSHOT_MARKER, {"covers": 0}), (9, 1)]),
    }
    for name, data in cases.items():
        d = tmp_path / name.replace(" ", "_")
        d.mkdir()
        (d / segment_name(1)).write_bytes(data)
        compare_all(d, name)


def snap_bytes(covered: int, items: list[Any], count: int | None = None) -> bytes:
    out = [encode_file_header(SNAPSHOT_MAGIC, covered, {"t": 1})]
    for i, item in enumerate(items):
        raw = item if isinstance(item, bytes) else pack(item)
        out.append(frame(T_SNAPSHOT_ITEM, i + 1, raw))
    out.append(frame(T_SNAPSHOT_END, len(items) + 1, pack(len(items) if count is None else count)))
    return b"".join(out)


def snap_outcome(path: Path, impl: str, decode: bool) -> Any:
    decoder.use_implementation(impl)
    try:
        hdr, items, size = read_snapshot(path, decode=decode)
        return ("ok", hdr, items, size)
    except CorruptLogError as exc:
        return ("error", str(exc), exc.offset)


@needs_c
def test_damaged_snapshots_same_result_as_reference(tmp_path: Path, restore_impl: Any) -> None:
    from wheelsched.wal import _scan_c

    rng = random.Random(11)
    path = tmp_path / snapshot_name(50)
    special = [
        snap_bytes(50, [[1, "a"], [2, b"b"]], count=3),  # trailer disagrees
        snap_bytes(50, [[1, "a"], b"\xc1"]),  # undecodable item
        snap_bytes(50, [[1, "a"], pack(1) + pack(2)]),  # two objects in one item
        snap_bytes(50, [[1, "a"]]) + b"extra",  # data after the trailer
        snap_bytes(50, [[1, "a"]])[:-3],  # trailer cut
        snap_bytes(50, []),  # empty snapshot
        encode_file_header(SNAPSHOT_MAGIC, 50, {}) + frame(T_SNAPSHOT_ITEM, 1, pack(1)),  # no trailer
        encode_file_header(SNAPSHOT_MAGIC, 50, {}) + frame(T_OP, 1, pack(1)),  # wrong type
        encode_file_header(SNAPSHOT_MAGIC, 50, {}) + frame(T_SNAPSHOT_ITEM, 2, pack(1)),  # wrong seq
    ]
    kinds = set()
    hw = _scan_c.hardware_crc()
    try:
        for it in range(len(special) + 200):
            if it < len(special):
                data = special[it]
            else:
                items = [["job", i, rng.randbytes(rng.randrange(0, 30))] for i in range(rng.randrange(0, 30))]
                data = snap_bytes(50, items)
                hdr = len(encode_file_header(SNAPSHOT_MAGIC, 50, {"t": 1}))
                data = damage(rng, data, hdr)
            path.write_bytes(data)
            for decode in (True, False):
                want = snap_outcome(path, "python", decode)
                kinds.add(want[0])
                for impl, use_hw in walks():
                    _scan_c.use_hardware_crc(use_hw)
                    assert snap_outcome(path, impl, decode) == want, (it, decode, use_hw)
    finally:
        _scan_c.use_hardware_crc(hw)
    assert kinds == {"ok", "error"}


# --------------------------------------------------------------------------- batches
both_walks = pytest.mark.parametrize(
    "impl", [pytest.param("c", marks=needs_c), "python"]
)


@both_walks
def test_replay_batches_match_replay(tmp_path: Path, impl: str, restore_impl: Any) -> None:
    decoder.use_implementation(impl)
    log = WriteAheadLog(tmp_path, WALOptions(fsync="never"), meta={"t": 1})
    log.open()
    log.append_many([["a", i] for i in range(250)])
    assert log.snapshot([["state", i] for i in range(100)])
    assert log.wait_snapshot(10)
    log.append_many([["b", i] for i in range(300)])
    log.close()

    log = WriteAheadLog(tmp_path, WALOptions(fsync="never"), meta={"t": 1})
    batches = list(log.replay_batches())
    log.close()
    log = WriteAheadLog(tmp_path, WALOptions(fsync="never"), meta={"t": 1})
    records = list(log.replay())
    log.open()  # after a full replay_batches() too, open() reuses the walk
    assert log.append("next") == 552
    log.close()

    kind, covered, items = batches[0]
    assert kind == SNAPSHOT and covered == 250 and items == [["state", i] for i in range(100)]
    flat = [(covered, SNAPSHOT, item) for item in items]
    for kind, first, payloads in batches[1:]:
        assert kind == OP
        flat.extend((first + i, OP, p) for i, p in enumerate(payloads))
    assert [tuple(r) for r in records] == flat
    ops = [r for r in records if r.kind == OP]
    # the snapshot marker took seq 251: the OPs after it start at 252
    assert ops[0].seq == 252 and ops[-1].seq == 551 and ops[-1].payload == ["b", 299]


@both_walks
def test_batches_split_at_markers(tmp_path: Path, impl: str, restore_impl: Any) -> None:
    decoder.use_implementation(impl)
    recs = [(T_OP, ["x", 1]), (T_SNAPSHOT_MARKER, {"covers": 0}), (T_OP, ["x", 3]), (T_OP, ["x", 4]),
            (9, "future"), (T_OP, ["x", 6])]
    (tmp_path / segment_name(1)).write_bytes(seg_bytes(1, recs))
    got = [(k, f, list(p)) for k, f, p in Recovery(tmp_path).batches()]
    assert got == [(OP, 1, [["x", 1]]), (OP, 3, [["x", 3], ["x", 4]]), (OP, 6, [["x", 6]])]
    assert msgpack.unpackb(pack(got[1][2])) == [["x", 3], ["x", 4]]
