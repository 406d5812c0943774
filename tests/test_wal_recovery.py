"""Torn tails, zeroed blocks, flipped bytes, missing segments: what recovery
accepts (and cuts) and what it refuses, on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from wal_helpers import IMPLEMENTATIONS, copy_dir, replay_all, wal_impl_fixture

from wheelsched.wal import OP, CorruptLogError, WALOptions, WriteAheadLog
from wheelsched.wal.decoder import Recovery, list_dir
from wheelsched.wal.format import REC_HEADER_SIZE, SEGMENT_MAGIC, decode_file_header

# every test runs on each record walk (C, C with software CRC32C, pure Python)
wal_impl = wal_impl_fixture(IMPLEMENTATIONS)


def make_log(directory: Path, n: int, *, segment_bytes: int = 64 << 20, size: int = 20) -> list[int]:
    log = WriteAheadLog(directory, WALOptions(segment_bytes=segment_bytes, fsync="never"), meta={"t": 1})
    log.open()
    seqs = [log.append(["op", i, "x" * size]) for i in range(n)]
    log.close()
    return seqs


def record_offsets(path: Path) -> list[tuple[int, int]]:
    """(start, end) of every record in a segment."""
    data = path.read_bytes()
    hdr = decode_file_header(data, SEGMENT_MAGIC)
    assert not isinstance(hdr, str)
    off, out = hdr.size, []
    while off < len(data):
        length = int.from_bytes(data[off + 4 : off + 8], "little")
        out.append((off, off + REC_HEADER_SIZE + length))
        off += REC_HEADER_SIZE + length
    return out


def only_segment(directory: Path) -> Path:
    segs = list_dir(directory).segments
    assert len(segs) == 1
    return segs[0][1]


def test_truncate_at_every_offset_of_last_records(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_log(src, 30)
    seg = only_segment(src)
    recs = record_offsets(seg)
    size = seg.stat().st_size
    start = recs[-4][0]
    for cut in range(start, size + 1):
        d = copy_dir(src, tmp_path / "cut")
        os.truncate(d / seg.name, cut)
        complete = sum(1 for _, e in recs if e <= cut)
        got = replay_all(d)
        assert [r.seq for r in got] == list(range(1, complete + 1)), cut
        assert got[-1].payload == ["op", complete - 1, "x" * 20]
        log = WriteAheadLog(d, WALOptions(fsync="never"), meta={"t": 1})
        assert len(list(log.replay())) == complete
        log.open()
        assert log.append("after") == complete + 1
        log.close()
        again = replay_all(d)
        assert [r.seq for r in again] == list(range(1, complete + 2))
        assert again[-1].payload == "after"
        boundary = recs[complete - 1][1]
        assert (d / f"{seg.name}.torn-{boundary}").exists() == (cut != boundary), cut


def test_zeroed_tail_is_cut(tmp_path: Path) -> None:
    make_log(tmp_path, 100)
    seg = only_segment(tmp_path)
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.seek(size - 512)
        f.write(bytes(512))
    survivors = sum(1 for _, e in record_offsets_raw(seg, size) if e <= size - 512)
    got = replay_all(tmp_path)
    assert len(got) == survivors and survivors < 100
    log = WriteAheadLog(tmp_path, WALOptions(fsync="never"), meta={"t": 1})
    log.open()
    assert log.append("next") == survivors + 1
    log.close()
    assert list(tmp_path.glob("*.torn-*"))


def record_offsets_raw(path: Path, size: int) -> list[tuple[int, int]]:
    # record boundaries computed before the damage (the log is deterministic)
    from wheelsched.wal.format import encode_file_header, frame, pack

    off = len(encode_file_header(SEGMENT_MAGIC, 1, {"t": 1}))
    out = []
    for i in range(100):
        n = len(frame(1, i + 1, pack(["op", i, "x" * 20])))
        out.append((off, off + n))
        off += n
    assert off == size
    return out


def test_preallocated_tail_is_recovered(tmp_path: Path) -> None:
    make_log(tmp_path, 10)
    seg = only_segment(tmp_path)
    with open(seg, "ab") as f:
        f.write(bytes(1 << 20))  # what fallocate or an extended-but-unwritten file looks like
    assert len(replay_all(tmp_path)) == 10
    log = WriteAheadLog(tmp_path, WALOptions(fsync="never"), meta={"t": 1})
    log.open()
    assert log.append("x") == 11
    log.close()
    assert [r.seq for r in replay_all(tmp_path)] == list(range(1, 12))


def test_zeroed_block_in_the_middle_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path, 200)
    seg = only_segment(tmp_path)
    recs = record_offsets(seg)
    with open(seg, "r+b") as f:
        f.seek(4096)
        f.write(bytes(512))
    bad = next(s for s, e in recs if e > 4096)
    with pytest.raises(CorruptLogError) as ei:
        replay_all(tmp_path)
    assert ei.value.path == str(seg) and ei.value.offset == bad
    assert seg.name in str(ei.value) and f"offset {bad}" in str(ei.value)
    before = seg.read_bytes()
    log = WriteAheadLog(tmp_path, WALOptions(fsync="never"))
    with pytest.raises(CorruptLogError):
        log.open()
    log.close()
    assert seg.read_bytes() == before  # refused means untouched


def test_flip_each_byte(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_log(src, 5, size=3)
    seg = only_segment(src)
    recs = record_offsets(seg)
    original = seg.read_bytes()
    last_start = recs[-1][0]
    for pos in range(len(original)):
        d = tmp_path / "flip"
        copy_dir(src, d)
        damaged = bytearray(original)
        damaged[pos] ^= 0x5A
        (d / seg.name).write_bytes(damaged)
        if pos >= last_start:  # inside the last record: indistinguishable from a torn write
            got = replay_all(d)
            assert [r.seq for r in got] == [1, 2, 3, 4], pos
        else:
            with pytest.raises(CorruptLogError) as ei:
                replay_all(d)
            expect_off = 0 if pos < recs[0][0] else next(s for s, e in recs if s <= pos < e)
            assert ei.value.offset == expect_off, pos
            assert seg.name in str(ei.value)


def test_missing_middle_segment_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path, 600, segment_bytes=4096)
    segs = list_dir(tmp_path).segments
    assert len(segs) >= 4
    segs[2][1].unlink()
    with pytest.raises(CorruptLogError) as ei:
        replay_all(tmp_path)
    assert "missing segment" in str(ei.value) and segs[3][1].name in str(ei.value)


def test_missing_first_segment_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path, 600, segment_bytes=4096)
    segs = list_dir(tmp_path).segments
    segs[0][1].unlink()
    with pytest.raises(CorruptLogError):
        replay_all(tmp_path)


def test_bad_record_in_non_last_segment_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path, 600, segment_bytes=4096)
    segs = list_dir(tmp_path).segments
    first = segs[0][1]
    size = first.stat().st_size
    os.truncate(first, size - 3)  # a torn tail, but not in the last segment
    with pytest.raises(CorruptLogError) as ei:
        replay_all(tmp_path)
    assert first.name in str(ei.value)


def test_segments_roll_and_seqs_continue(tmp_path: Path) -> None:
    seqs = make_log(tmp_path, 1000, segment_bytes=4096)
    assert seqs == list(range(1, 1001))
    segs = list_dir(tmp_path).segments
    assert len(segs) > 5
    for (_, p) in segs:
        assert p.stat().st_size <= 4096
    got = replay_all(tmp_path)
    assert [r.seq for r in got] == seqs and all(r.kind == OP for r in got)
    rec = Recovery(tmp_path).run()
    assert rec.last_seq == 1000 and rec.tail is None


def test_temp_files_are_removed(tmp_path: Path) -> None:
    make_log(tmp_path, 3)
    (tmp_path / "0000000000000004.wal.tmp").write_bytes(b"partial")
    (tmp_path / "0000000000000003.snap.tmp").write_bytes(b"partial")
    log = WriteAheadLog(tmp_path, WALOptions(fsync="never"), meta={"t": 1})
    assert len(list(log.replay())) == 3
    log.open()
    log.close()
    assert not list(tmp_path.glob("*.tmp"))
