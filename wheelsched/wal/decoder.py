"""Reading and validating a log directory: segments, snapshots, the torn tail.

Reading is read-only. ``Recovery`` walks a directory exactly the way replay
does (newest valid snapshot, then the segments after it), yields the records,
and leaves behind a description of what it found (where the valid log ends,
whether the last segment has a torn tail, which files are stale or
temporary). The writer (``log.py``) and ``repair.py`` act on that
description; ``verify``/``dump`` only print it.

Speed matters here (replay stands between a crash and service). The walk
over the framed records (CRC32C, seq continuity, the reason a record is bad)
runs in C (``_scan_c``, csrc/walscan.c) one chunk of records per call; it
hands back the payloads as one msgpack array, which a single
``msgpack.unpackb`` decodes. The pure-Python walk below is the reference and
the fallback, selected the msgpack/yarl way: it is used when
``WHEELSCHED_PURE_PYTHON`` is set (and not "" or "0") or the extension is not
built. ``IMPLEMENTATION`` says which one runs ("c" or "python"). Both give the
same results and the same errors; on any error in a snapshot the C path
re-reads it with the reference to raise exactly the reference's error.

Records come out in batches (``Recovery.batches``): ``(kind, first_seq,
payloads)`` where an OP batch's payloads carry the consecutive seqs
``first_seq, first_seq + 1, ...`` and every item of the SNAPSHOT batch carries
``first_seq`` (the seq the snapshot covers). ``Recovery.records`` flattens
them into ``Record``s.
"""

from __future__ import annotations

import gc
import os
import re
import struct
from collections.abc import Callable, Iterator
from functools import partial
from itertools import count as _count
from itertools import repeat
from pathlib import Path
from struct import error as struct_error
from typing import Any, NamedTuple

import msgpack
from crc32c import crc32c

from wheelsched import native

from .format import (
    OP,
    REC_HEADER,
    REC_HEADER_SIZE,
    SEGMENT_MAGIC,
    SEGMENT_RE,
    SEQ_BITS,
    SEQ_MASK,
    SNAPSHOT,
    SNAPSHOT_MAGIC,
    SNAPSHOT_RE,
    T_OP,
    T_SNAPSHOT_END,
    T_SNAPSHOT_ITEM,
    TMP_SUFFIX,
    CorruptLogError,
    FileHeader,
    decode_file_header,
)

_C: Any = native.extension("wheelsched.wal._scan_c")  # the C scanner module when it is used, else None
IMPLEMENTATION = "python" if _C is None else "c"


def use_implementation(name: str) -> str:
    """Switch the walk to "c" or "python" (tests run both); returns the
    previous one. Raises ImportError for "c" when the extension is missing."""
    global _C, IMPLEMENTATION
    previous = IMPLEMENTATION
    if name == "c":
        from . import _scan_c

        _C = _scan_c
    elif name == "python":
        _C = None
    else:
        raise ValueError(f"unknown implementation {name!r}")
    IMPLEMENTATION = name
    return previous


class Record(NamedTuple):
    seq: int
    kind: int  # OP or SNAPSHOT
    payload: Any


ProgressFn = Callable[[int, int, int], None]
Batch = tuple[int, int, list[Any]]  # (kind, first_seq, payloads)
PROGRESS_EVERY = 100_000

_make_record = partial(tuple.__new__, Record)  # C-level Record((seq, kind, payload))
_NONZERO = re.compile(rb"[^\x00]")
_LENGTH = struct.Struct("<I")


class Tail(NamedTuple):
    """A torn tail of the last segment: everything from ``offset`` on is cut."""

    path: Path
    offset: int
    size: int  # file size (the cut is size - offset bytes)
    reason: str


class PastBoundary(NamedTuple):
    """Bytes of a segment after the record whose seq is one less than the
    next segment's first (the boundary rule, see the package docstring):
    late writes of a deposed writer, or a torn tail that is no longer the
    log's. Ignored by replay, never an error; ``wheelsched wal verify``
    reports them."""

    path: Path
    offset: int  # where the ignored bytes start (the end of the boundary record)
    size: int  # file size (size - offset bytes are ignored)
    records: int  # CRC-valid records back to back from offset (whatever their seqs)


class DirLayout(NamedTuple):
    segments: list[tuple[int, Path]]  # (first seq from the name, path), sorted
    snapshots: list[tuple[int, Path]]  # (covered seq from the name, path), sorted
    temps: list[Path]  # leftovers of an interrupted create/rename
    # segment file name -> inode when listed (a fenced open checks that no
    # segment appeared or was replaced while it recovered)
    segment_inodes: dict[str, int]


def list_dir(directory: Path) -> DirLayout:
    segments: list[tuple[int, Path]] = []
    snapshots: list[tuple[int, Path]] = []
    temps: list[Path] = []
    inodes: dict[str, int] = {}
    for entry in os.scandir(directory):
        if not entry.is_file():
            continue
        name = entry.name
        if name.endswith(TMP_SUFFIX):
            temps.append(Path(entry.path))
        elif m := SEGMENT_RE.match(name):
            segments.append((int(m.group(1), 16), Path(entry.path)))
            inodes[name] = entry.inode()
        elif m := SNAPSHOT_RE.match(name):
            snapshots.append((int(m.group(1), 16), Path(entry.path)))
    segments.sort()
    snapshots.sort()
    return DirLayout(segments, snapshots, sorted(temps), inodes)


def segment_inodes(directory: Path) -> dict[str, int]:
    """Segment file name -> inode, as listed now."""
    return {e.name: e.inode() for e in os.scandir(directory) if SEGMENT_RE.match(e.name)}


def read_file(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.readall()


def _read_for_scan(path: Path) -> bytes | bytearray:
    """The file to walk: with the C walk a bytearray, which the walk then
    reuses for the decoded chunk (see ``_scan_c.scan``) instead of
    allocating a second buffer of the file's size."""
    if _C is None:
        return read_file(path)
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        buf = _C.uninitialized(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
        view.release()
        if got < size:  # the file shrank meanwhile
            del buf[got:]
        return buf


def find_valid_record(data: bytes, start: int, min_seq: int) -> int | None:
    """Offset of the first record at or after ``start`` that passes its CRC and
    has seq >= min_seq, or None. Used only after a bad record, to tell a torn
    tail (nothing valid follows) from corruption (valid records follow)."""
    if _C is not None:
        return _C.find_valid(data, start, min_seq)
    n = len(data)
    mv = memoryview(data)
    unpack = REC_HEADER.unpack_from
    p = start
    while p + REC_HEADER_SIZE <= n:
        if data[p + 15] == 0:  # type byte 0 is never written: skip the zero run fast
            m = _NONZERO.search(data, p + 15)
            if m is None:
                return None
            p = max(p + 1, m.start() - 15)
            continue
        crc, length, st = unpack(data, p)
        end = p + REC_HEADER_SIZE + length
        if end <= n and (st & SEQ_MASK) >= min_seq and crc32c(mv[p + 4 : end]) == crc:
            return p
        p += 1
    return None


def count_frames(data: bytes | bytearray, start: int) -> int:
    """CRC-valid records back to back from ``start`` (seqs are not checked):
    how many records lie past a segment's boundary, for the report only."""
    n = len(data)
    mv = memoryview(data)
    unpack = REC_HEADER.unpack_from
    count = 0
    off = start
    while off + REC_HEADER_SIZE <= n:
        crc, length, st = unpack(data, off)
        end = off + REC_HEADER_SIZE + length
        if st == 0 or end > n or crc32c(mv[off + 4 : end]) != crc:
            break
        count += 1
        off = end
    return count


class _Scan:
    """State of a scan through one segment (resumable, so replay can report
    progress and keep memory bounded)."""

    __slots__ = ("bad", "data", "end", "expect", "mv", "offset", "path")

    def __init__(self, path: Path, data: bytes | bytearray, offset: int, expect: int) -> None:
        self.path = path
        self.data = data
        self.mv = memoryview(data)
        self.offset = offset
        self.expect = expect
        self.end = len(data)
        self.bad: str | None = None  # why the scan stopped before end of file


def scan_chunk(
    scan: _Scan, out: list[tuple[int, list[Any]]] | None, min_seq: int, limit: int
) -> int:
    """Validate up to ``limit`` records from ``scan.offset``; append the OP
    records with seq > min_seq to ``out`` (decoded, as runs of consecutive
    seqs: ``(first_seq, payloads)``) unless ``out`` is None. Returns the
    number of records scanned. Stops at the first bad record and sets
    ``scan.bad``; a CRC-valid record with the wrong seq raises at once.

    Payloads are decoded after the walk, all at once, with the cyclic GC
    paused: replaying creates hundreds of thousands of containers and the
    young-generation collections otherwise cost ~40% of replay time."""
    if _C is not None:
        return _scan_chunk_c(scan, out, min_seq, limit)
    return _scan_chunk_py(scan, out, min_seq, limit)


def _bad_reason(data: bytes, off: int, past_end: bool) -> str:
    crc, _length, st = REC_HEADER.unpack_from(data, off)
    if st == 0 and crc == 0:
        return "zeroed record header"
    return "record extends past end of file" if past_end else "checksum mismatch"


def _scan_chunk_c(
    scan: _Scan, out: list[tuple[int, list[Any]]] | None, min_seq: int, limit: int
) -> int:
    C = _C
    start_expect = scan.expect
    status, off, expect, count, found, _type, blob, others = C.scan(
        scan.data, scan.offset, start_expect, limit, T_OP, min_seq, out is not None, False
    )
    scan.offset = off
    scan.expect = expect
    if status == C.SEQ:
        raise CorruptLogError(scan.path, off, f"sequence gap: found seq {found}, expected {expect}")
    if status == C.PARTIAL:
        scan.bad = "partial record header"
    elif status == C.PAST_END:
        scan.bad = _bad_reason(scan.data, off, True)
    elif status == C.CRC:
        scan.bad = _bad_reason(scan.data, off, False)
    elif status == C.FULL:  # cannot happen: scan sizes `others` for `limit` records
        raise AssertionError("walscan: others array full")
    if out is not None:
        first = max(start_expect, min_seq + 1)
        if expect - first > len(others):  # at least one OP payload
            _decode_runs(out, scan, blob, first, others, True)
    return count


def _scan_chunk_py(
    scan: _Scan, out: list[tuple[int, list[Any]]] | None, min_seq: int, limit: int
) -> int:
    data = scan.data
    mv = scan.mv
    n = scan.end
    off = scan.offset
    expect = scan.expect
    unpack = REC_HEADER.unpack_from
    hs = REC_HEADER_SIZE
    count = 0
    pieces: list[memoryview] = []
    add = pieces.append if out is not None else None
    first_out = 0  # seq of pieces[0]
    others: list[int] = []  # seqs > min_seq that are not OPs (markers, future types)
    stop = min(limit, (n - off) // hs + 1) if off < n else 0
    try:
        while count < stop:
            crc, length, st = unpack(data, off)
            end = off + hs + length
            if end > n:
                scan.bad = (
                    "zeroed record header" if st == 0 and crc == 0 else "record extends past end of file"
                )
                break
            if crc32c(mv[off + 4 : end]) != crc:
                scan.bad = "zeroed record header" if st == 0 and crc == 0 else "checksum mismatch"
                break
            if (st & SEQ_MASK) != expect:
                raise CorruptLogError(
                    scan.path, off, f"sequence gap: found seq {st & SEQ_MASK}, expected {expect}"
                )
            if add is not None and expect > min_seq:
                if (st >> SEQ_BITS) == T_OP:
                    if not pieces:
                        first_out = expect
                    add(mv[off + hs : end])
                elif pieces:
                    others.append(expect)
            expect += 1
            count += 1
            off = end
            if off >= n:
                break
    except struct_error:
        scan.bad = "partial record header"
    finally:
        scan.offset = off
        scan.expect = expect
    if pieces and out is not None:
        _decode_runs(out, scan, pieces, first_out, others, False)
    return count


def _unpack_pieces(scan: _Scan, blob: bytes, n: int) -> list[Any]:
    """The reference decode: ``n`` payloads back to back, each exactly one
    msgpack object (the C path falls back to it to raise the same error)."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(blob), 1 << 20), raw=False)
    unpacker.feed(blob)
    try:
        payloads = list(unpacker)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CorruptLogError(scan.path, scan.offset, f"undecodable payload ({exc})") from exc
    if len(payloads) != n:
        # a payload holding several msgpack objects: CRC-valid but not ours
        raise CorruptLogError(scan.path, scan.offset, "a payload is not exactly one msgpack object")
    return payloads


def _decode_runs(
    out: list[tuple[int, list[Any]]], scan: _Scan, pieces: Any, first: int, others: list[int],
    is_array: bool,
) -> None:
    """Decode the payloads (``pieces``: memoryviews, or with ``is_array`` one
    msgpack array of them from the C scan) and append them to ``out`` as runs
    of consecutive seqs starting at ``first``, skipping the seqs in
    ``others`` (sorted; records that are not OPs)."""
    gc_was = gc.isenabled()
    gc.disable()
    try:
        if is_array:
            try:
                payloads = msgpack.unpackb(pieces, raw=False)
            except Exception:  # undecodable, or payloads that are not one object each
                blob = bytes(pieces[5:])
                k = int.from_bytes(pieces[1:5], "big")
                # the reference raises its error, or (payloads followed by an
                # incomplete object, which it ignores) returns its result
                payloads = _unpack_pieces(scan, blob, k)
        else:
            payloads = _unpack_pieces(scan, b"".join(pieces), len(pieces))
        if not others:
            out.append((first, payloads))
            return
        i = 0
        seq = first
        for skip in others:
            k = skip - seq  # payloads before the skipped seq
            if k > 0:
                out.append((seq, payloads[i : i + k]))
                i += k
            seq = skip + 1
        if i < len(payloads):
            out.append((seq, payloads[i:]))
    finally:
        if gc_was:
            gc.enable()


def read_segment_header(path: Path, data: bytes) -> FileHeader:
    hdr = decode_file_header(data, SEGMENT_MAGIC)
    if isinstance(hdr, str):
        raise CorruptLogError(path, 0, hdr)
    return hdr


def read_snapshot(path: Path, *, decode: bool = True) -> tuple[FileHeader, list[Any], int]:
    """Read and fully validate a snapshot file: (header, items, file size).
    Snapshots are renamed into place only after they were completely written
    and fsynced, so any flaw is corruption (there is no torn tail here)."""
    data = _read_for_scan(path)
    hdr = decode_file_header(data, SNAPSHOT_MAGIC)
    if isinstance(hdr, str):
        raise CorruptLogError(path, 0, hdr)
    if _C is not None:
        got = _read_snapshot_c(data, hdr, decode)
        if got is not None:
            return got
        # something is wrong: the reference walk names it exactly (on a
        # fresh copy: the C walk compacted the payloads in place)
        data = read_file(path)
    return _read_snapshot_py(path, data, hdr, decode)


def _read_snapshot_c(
    data: bytes | bytearray, hdr: FileHeader, decode: bool
) -> tuple[FileHeader, list[Any], int] | None:
    """The whole snapshot in one C walk and one unpackb; None on any flaw."""
    C = _C
    n = len(data)
    status, off, expect, _count, _found, rtype, blob, _others = C.scan(
        data, hdr.size, 1, 1 << 62, T_SNAPSHOT_ITEM, 0, decode, True
    )
    if status != C.STOP or rtype != T_SNAPSHOT_END:
        return None
    (length,) = _LENGTH.unpack_from(data, off + 4)
    end = off + REC_HEADER_SIZE + length
    if end != n:
        return None
    try:
        count = msgpack.unpackb(data[off + REC_HEADER_SIZE : end])
    except Exception:
        return None
    if count != expect - 1:
        return None
    items: list[Any] = []
    if decode:
        gc_was = gc.isenabled()
        gc.disable()
        try:
            items = msgpack.unpackb(blob, raw=False)
        except Exception:
            return None
        finally:
            if gc_was:
                gc.enable()
    return hdr, items, n


def _read_snapshot_py(
    path: Path, data: bytes, hdr: FileHeader, decode: bool
) -> tuple[FileHeader, list[Any], int]:
    mv = memoryview(data)
    unpack = REC_HEADER.unpack_from
    unpackb = msgpack.unpackb
    items: list[Any] = []
    append = items.append
    off = hdr.size
    n = len(data)
    expect = 1
    hs = REC_HEADER_SIZE
    try:
        while True:
            if n - off < hs:
                raise CorruptLogError(path, off, "snapshot ends without its trailer")
            crc, length, st = unpack(data, off)
            end = off + hs + length
            if end > n:
                raise CorruptLogError(path, off, "record extends past end of file")
            if crc32c(mv[off + 4 : end]) != crc:
                raise CorruptLogError(path, off, "checksum mismatch")
            seq = st & SEQ_MASK
            if seq != expect:
                raise CorruptLogError(path, off, f"item {seq} where {expect} was expected")
            rtype = st >> SEQ_BITS
            if rtype == T_SNAPSHOT_ITEM:
                if decode:
                    append(unpackb(mv[off + hs : end]))
            elif rtype == T_SNAPSHOT_END:
                count = unpackb(mv[off + hs : end])
                if count != expect - 1:
                    raise CorruptLogError(path, off, f"trailer says {count} items, found {expect - 1}")
                if end != n:
                    raise CorruptLogError(path, end, "data after the snapshot trailer")
                break
            else:
                raise CorruptLogError(path, off, f"unexpected record type {rtype} in a snapshot")
            expect += 1
            off = end
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        if isinstance(exc, CorruptLogError):
            raise
        raise CorruptLogError(path, off, f"undecodable payload ({exc})") from exc
    return hdr, items, n


class Recovery:
    """Walk a log directory the way replay does.

    After ``records()`` was exhausted, the attributes describe the log:
    ``covered`` (seq covered by the snapshot used, 0 if none),
    ``snapshot`` (its path or None), ``segments`` (the (first_seq, path) list
    replay used), ``stale_segments`` (wholly covered by the snapshot),
    ``stale_snapshots``, ``temps``, ``last_seq`` (last valid record),
    ``tail`` (a ``Tail`` to truncate, or None), ``tail_end`` (end of the
    valid data in the last segment), ``meta`` (of the last segment) and
    ``past_boundary`` (a ``PastBoundary`` per segment with bytes after its
    boundary record; ``fenced_bytes``/``fenced_records`` add them up).
    Anything that cannot be recovered automatically raises CorruptLogError.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.layout = list_dir(self.directory)
        self.covered = 0
        self.snapshot: Path | None = None
        self.snapshot_meta: Any = None
        self.segments: list[tuple[int, Path]] = []
        self.stale_segments: list[Path] = []
        self.stale_snapshots: list[Path] = []
        self.temps = list(self.layout.temps)
        self.last_seq = 0
        self.tail: Tail | None = None
        self.tail_end = 0
        self.meta: Any = None
        self.records_done = 0
        self.complete = False
        self.snapshot_warnings: list[str] = []
        self.past_boundary: list[PastBoundary] = []

    @property
    def fenced_bytes(self) -> int:
        """Bytes ignored after segment boundaries (see ``PastBoundary``)."""
        return sum(p.size - p.offset for p in self.past_boundary)

    @property
    def fenced_records(self) -> int:
        """CRC-valid records among ``fenced_bytes``."""
        return sum(p.records for p in self.past_boundary)

    # -- planning -------------------------------------------------------------
    def _choose_snapshot(
        self, decode: bool
    ) -> tuple[int, Path | None, list[Any], int]:
        """Newest snapshot that validates and that the segments can continue.
        A newer snapshot that fails validation is reported (warning) and an
        older one is used if it exists: snapshots are deleted only after a
        newer one is complete, so that fallback is consistent."""
        segs = self.layout.segments
        first_seg = segs[0][0] if segs else None
        error: CorruptLogError | None = None
        for covered, path in reversed(self.layout.snapshots):
            try:
                hdr, items, size = read_snapshot(path, decode=decode)
            except CorruptLogError as exc:
                error = error or exc
                self.snapshot_warnings.append(str(exc))
                continue
            if hdr.seq != covered:
                exc = CorruptLogError(path, 0, f"header covers seq {hdr.seq}, name says {covered}")
                error = error or exc
                continue
            if first_seg is not None and first_seg > covered + 1:
                exc = CorruptLogError(
                    segs[0][1], 0,
                    f"log starts at seq {first_seg} but snapshot {path.name} covers only up to {covered}",
                )
                error = error or exc
                continue
            self.snapshot_meta = hdr.meta
            self.stale_snapshots = [p for c, p in self.layout.snapshots if c < covered]
            return covered, path, items, size
        if error is not None and (first_seg is None or first_seg > 1):
            raise error
        return 0, None, [], 0

    # -- the walk -------------------------------------------------------------
    def records(
        self, *, decode: bool = True, progress: ProgressFn | None = None
    ) -> Iterator[Record]:
        """Every record as a ``Record``: the snapshot's items (kind SNAPSHOT,
        seq = the seq the snapshot covers), then the OPs after it."""
        for kind, first, payloads in self.batches(decode=decode, progress=progress):
            seqs = repeat(first) if kind == SNAPSHOT else _count(first)
            yield from map(_make_record, zip(seqs, repeat(kind), payloads))

    def batches(
        self, *, decode: bool = True, progress: ProgressFn | None = None
    ) -> Iterator[Batch]:
        """The records as ``(kind, first_seq, payloads)`` batches: one SNAPSHOT
        batch (every item's seq is ``first_seq``, the covered seq) if a
        snapshot is used, then OP batches whose payloads carry the
        consecutive seqs ``first_seq, first_seq + 1, ...`` (a batch ends
        where a seq is not an OP, e.g. a snapshot marker). Without
        ``decode`` nothing is yielded; the walk only validates."""
        covered, snap_path, items, snap_size = self._choose_snapshot(decode)
        self.covered = covered
        self.snapshot = snap_path
        segs = self.layout.segments
        # segments whose records are all <= covered are stale (a crash came
        # between writing the snapshot and deleting them); never the last one
        start = 0
        while start + 1 < len(segs) and segs[start + 1][0] <= covered + 1:
            self.stale_segments.append(segs[start][1])
            start += 1
        used = segs[start:]
        if not used and not snap_path:
            self.complete = True  # empty directory: a new log
            return
        if used and used[0][0] > covered + 1:
            raise CorruptLogError(
                used[0][1], 0, f"log starts at seq {used[0][0]}, expected {covered + 1} or earlier"
            )
        self.segments = used
        sizes = [p.stat().st_size for _, p in used]
        bytes_total = snap_size + sum(sizes)
        bytes_done = 0
        done = 0
        next_report = PROGRESS_EVERY

        if snap_path is not None:
            if items:
                yield SNAPSHOT, covered, items
            done = len(items)
            bytes_done = snap_size
            if progress is not None and done >= next_report:
                progress(done, bytes_done, bytes_total)
                next_report = done + PROGRESS_EVERY
            del items

        expect: int | None = None
        last_seq = covered
        for idx, (first, path) in enumerate(used):
            is_last = idx == len(used) - 1
            # The boundary rule: a segment ends with the record just before
            # the next segment's first; what follows it in the file is not
            # the log's (a deposed writer's late batch, or a torn tail left
            # behind by a takeover). Segment names are unique and sorted,
            # so a segment that is not the last must hold >= 1 record.
            boundary = None if is_last else used[idx + 1][0] - 1
            data = _read_for_scan(path) if decode else read_file(path)
            hdr = read_segment_header(path, data)
            if hdr.seq != first:
                raise CorruptLogError(path, 0, f"header says first seq {hdr.seq}, name says {first}")
            if expect is not None and first != expect:
                what = "missing segment" if first > expect else "overlapping segments"
                raise CorruptLogError(
                    path, 0, f"{what}: segment starts at seq {first}, expected {expect}"
                )
            self.meta = hdr.meta
            scan = _Scan(path, data, hdr.size, first)
            out: list[tuple[int, list[Any]]] | None = [] if decode else None
            while True:
                limit = PROGRESS_EVERY
                if boundary is not None:
                    limit = min(limit, boundary + 1 - scan.expect)
                    if limit <= 0:
                        break  # the boundary record was read
                n = scan_chunk(scan, out, covered, limit)
                if out:
                    for first_seq, payloads in out:
                        yield OP, first_seq, payloads
                    out.clear()
                done += n
                if progress is not None and done >= next_report:
                    progress(done, bytes_done + scan.offset, bytes_total)
                    next_report = done + PROGRESS_EVERY
                if scan.bad is not None or scan.offset >= scan.end:
                    break
            if scan.bad is not None:
                follow = find_valid_record(data, scan.offset + 1, scan.expect) if is_last else None
                if not is_last:
                    raise CorruptLogError(path, scan.offset, scan.bad + " (not in the last segment)")
                if follow is not None:
                    raise CorruptLogError(
                        path, scan.offset, f"{scan.bad}; a valid record follows at offset {follow}"
                    )
                self.tail = Tail(path, scan.offset, len(data), scan.bad)
            elif boundary is not None and scan.expect > boundary and scan.offset < len(data):
                # the scan stopped at the boundary; data from scan.offset on
                # is untouched (the C walk compacts only what it has read)
                self.past_boundary.append(
                    PastBoundary(path, scan.offset, len(data), count_frames(data, scan.offset))
                )
            expect = scan.expect
            last_seq = scan.expect - 1
            bytes_done += len(data)
            if is_last:
                self.tail_end = scan.offset
            del data, scan
        if last_seq < covered:
            where = used[-1][1] if used else snap_path
            raise CorruptLogError(
                where, self.tail_end,
                f"log ends at seq {last_seq} but the snapshot covers up to {covered}",
            )
        self.last_seq = last_seq
        self.records_done = done
        if progress is not None:
            progress(done, bytes_total, bytes_total)
        self.complete = True

    def run(self, *, decode: bool = False, progress: ProgressFn | None = None) -> Recovery:
        """Walk without keeping records (validation only)."""
        for _ in self.records(decode=decode, progress=progress):
            pass
        return self
