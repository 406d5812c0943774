"""Changing a log directory so it can be appended to again.

Automatic (run by ``WriteAheadLog.open``): remove temp files left by an
interrupted create/rename, cut a torn tail off the last segment (the cut
bytes are kept next to it in ``<segment>.torn-<offset>``), delete segments
and snapshots made stale by a newer snapshot.

Explicit (``wheelsched wal salvage``): keep every record that forms a valid
log, move everything else aside into ``salvaged-<time>/``.

Every create, rename and delete is followed by an fsync of the directory, so
the repair itself survives a crash at any point (each step is idempotent:
running recovery again after a crash in the middle of it finishes the job).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import msgpack
from crc32c import crc32c

from .decoder import (
    Tail,
    _Scan,
    find_valid_record,
    list_dir,
    read_file,
    read_segment_header,
    read_snapshot,
    scan_chunk,
)
from .format import (
    REC_HEADER,
    REC_HEADER_SIZE,
    SEQ_BITS,
    SEQ_MASK,
    CorruptLogError,
)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_files(directory: Path, paths: list[Path]) -> None:
    if not paths:
        return
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    fsync_dir(directory)


def keep_tail_aside(tail: Tail) -> Path:
    """Copy the bytes of ``tail`` into ``<segment>.torn-<offset>`` (fsynced)
    without touching the segment. Returns the side file's path."""
    side = tail.path.with_name(f"{tail.path.name}.torn-{tail.offset}")
    with open(tail.path, "rb") as f:
        f.seek(tail.offset)
        cut = f.read()
    write_file_durably(side, cut)
    fsync_dir(tail.path.parent)
    return side


def truncate_tail(tail: Tail) -> Path:
    """Cut ``tail`` off its segment, keeping the cut bytes in a side file
    first (the side file is fsynced before the segment is touched, so the
    bytes survive whatever happens next). Returns the side file's path."""
    side = keep_tail_aside(tail)
    fd = os.open(tail.path, os.O_WRONLY)
    try:
        os.ftruncate(fd, tail.offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(tail.path.parent)
    return side


# --------------------------------------------------------------------------- salvage


def salvage(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Keep the longest valid log (newest valid snapshot + the contiguous run
    of valid records after it), move every other file aside into
    ``salvaged-<time>/`` and write the records that are readable but cannot
    be part of a valid log (they follow a gap) there as
    ``readable-after-gap.msgpack`` (a stream of [seq, type, payload]).

    Records after a gap are not re-inserted: the engine's state after a lost
    operation is not what those later operations were applied to, so an
    operator must decide what to do with them.

    Bytes past a segment's boundary (the boundary rule) are not part of the
    log and not a problem: they stay where they are, as replay ignores them.
    """
    directory = Path(directory)
    layout = list_dir(directory)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = directory / f"salvaged-{stamp}"
    n = 0
    while aside.exists():
        n += 1
        aside = directory / f"salvaged-{stamp}-{n}"
    report: dict[str, Any] = {"moved": [], "kept_last_seq": 0, "readable_after_gap": 0, "problem": None}
    to_move: list[Path] = list(layout.temps)

    # newest snapshot that validates
    covered = 0
    for c, path in reversed(layout.snapshots):
        try:
            read_snapshot(path, decode=False)
        except CorruptLogError as exc:
            report["problem"] = report["problem"] or str(exc)
            to_move.append(path)
            continue
        covered = c
        break
    segments = [(f, p) for f, p in layout.segments]
    # drop segments wholly covered by the snapshot (they are stale)
    while len(segments) > 1 and segments[1][0] <= covered + 1:
        to_move.append(segments.pop(0)[1])

    expect: int | None = None  # seq the next segment must start with
    keep_upto: tuple[Path, int] | None = None  # (segment, offset) where the valid log ends
    stray: list[tuple[int, int, Any]] = []
    broken = False
    for idx, (first, path) in enumerate(segments):
        # the boundary rule: read a segment only up to the seq before the next one's first
        limit = segments[idx + 1][0] - first if idx + 1 < len(segments) else 1 << 62
        if broken:
            to_move.append(path)
            stray.extend(_readable_records(path))
            continue
        data = read_file(path)
        try:
            hdr = read_segment_header(path, data)
            if hdr.seq != first:
                raise CorruptLogError(path, 0, f"header says seq {hdr.seq}, name says {first}")
            if expect is None and first > covered + 1:
                raise CorruptLogError(path, 0, f"log starts at {first}, expected {covered + 1}")
            if expect is not None and first != expect:
                raise CorruptLogError(path, 0, f"segment starts at {first}, expected {expect}")
        except CorruptLogError as exc:
            report["problem"] = report["problem"] or str(exc)
            broken = True
            to_move.append(path)
            stray.extend(_readable_records(path))
            continue
        scan = _Scan(path, data, hdr.size, first)
        try:
            while scan.bad is None and scan.offset < scan.end and scan.expect < first + limit:
                scan_chunk(scan, None, 0, min(1 << 30, first + limit - scan.expect))
        except CorruptLogError as exc:  # a valid record with the wrong seq
            scan.bad = exc.reason
        if scan.bad is not None:
            report["problem"] = report["problem"] or f"{path}: offset {scan.offset}: {scan.bad}"
            broken = True
            keep_upto = (path, scan.offset)
            stray.extend(_readable_records(path, scan.offset + 1))
        expect = scan.expect
        report["kept_last_seq"] = expect - 1

    if not to_move and keep_upto is None:
        return report
    aside.mkdir()
    fsync_dir(directory)
    if keep_upto is not None:
        path, off = keep_upto
        data = read_file(path)
        write_file_durably(aside / f"{path.name}.from-{off}", data[off:])
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, off)
            os.fsync(fd)
        finally:
            os.close(fd)
    if stray:
        packer = msgpack.Packer(use_bin_type=True)
        write_file_durably(
            aside / "readable-after-gap.msgpack", b"".join(packer.pack(list(r)) for r in stray)
        )
        report["readable_after_gap"] = len(stray)
    for p in to_move:
        shutil.move(str(p), str(aside / p.name))
        report["moved"].append(p.name)
    fsync_dir(aside)
    fsync_dir(directory)
    report["directory"] = str(aside)
    return report


def _readable_records(path: Path, start: int | None = None) -> list[tuple[int, int, Any]]:
    """Every CRC-valid record in a damaged file, resynchronising after each
    bad spot by scanning forward for the next valid record."""
    data = read_file(path)
    if start is None:
        try:
            start = read_segment_header(path, data).size
        except CorruptLogError:
            start = 0
    out: list[tuple[int, int, Any]] = []
    mv = memoryview(data)
    n = len(data)
    off: int | None = start
    while off is not None and off + REC_HEADER_SIZE <= n:
        crc, length, st = REC_HEADER.unpack_from(data, off)
        end = off + REC_HEADER_SIZE + length
        if end <= n and crc32c(mv[off + 4 : end]) == crc and st != 0:
            try:
                payload = msgpack.unpackb(mv[off + REC_HEADER_SIZE : end])
            except Exception:
                payload = bytes(mv[off + REC_HEADER_SIZE : end])
            out.append((st & SEQ_MASK, st >> SEQ_BITS, payload))
            off = end
        else:
            off = find_valid_record(data, off + 1, 0)
    return out
