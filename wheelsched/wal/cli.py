"""``wheelsched wal verify|dump|salvage DIR``.

verify  exit 0: clean; 1: corrupt (the first problem is printed, nothing is
        changed); 3: a torn tail that opening the log would cut (recoverable).
        Bytes past a segment's boundary (a deposed writer's late writes, see
        the format spec) are listed as "fenced" and do not change the exit code.
dump    one line per record: seq, kind, payload (JSON, bytes as base64).
salvage keep the longest valid log, move everything else into
        ``salvaged-<time>/`` (explicit and destructive, so it is its own command).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

from .decoder import Recovery
from .format import OP, SNAPSHOT, CorruptLogError

EXIT_CORRUPT = 1
EXIT_TORN_TAIL = 3


def register(subparsers: Any) -> None:
    wal = subparsers.add_parser("wal", help="inspect and repair a shard's write-ahead log")
    sub = wal.add_subparsers(dest="wal_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("verify", help="check every file of a log directory (read-only)")
    p.add_argument("directory")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("dump", help="print every record replay would return")
    p.add_argument("directory")
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("salvage", help="keep every readable record of a damaged log, move the rest aside")
    p.add_argument("directory")
    p.set_defaults(func=cmd_salvage)


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        rec = Recovery(args.directory).run(decode=True)
    except CorruptLogError as exc:
        print(f"CORRUPT: {exc}", file=sys.stderr)
        return EXIT_CORRUPT
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CORRUPT
    for w in rec.snapshot_warnings:
        print(f"warning: ignored snapshot: {w}", file=sys.stderr)
    snap = f", snapshot {rec.snapshot.name} covers seq {rec.covered}" if rec.snapshot else ""
    print(
        f"{args.directory}: {len(rec.segments)} segment(s), last seq {rec.last_seq}{snap}, "
        f"{rec.records_done} records checked"
    )
    for p in rec.past_boundary:
        print(
            f"fenced: {p.path}: offset {p.offset}: {p.size - p.offset} byte(s) past the segment's "
            f"boundary ({p.records} CRC-valid record(s)), ignored"
        )
    if rec.tail is not None:
        t = rec.tail
        print(
            f"TORN TAIL: {t.path}: offset {t.offset}: {t.reason} "
            f"({t.size - t.offset} bytes; open() will cut them and keep them aside)",
            file=sys.stderr,
        )
        return EXIT_TORN_TAIL
    if rec.temps or rec.stale_segments:
        print(f"note: {len(rec.temps)} temp file(s), {len(rec.stale_segments)} stale segment(s)")
    return 0


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(obj)).decode()}
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def cmd_dump(args: argparse.Namespace) -> int:
    names = {OP: "op", SNAPSHOT: "snapshot"}
    out = sys.stdout
    try:
        for rec in Recovery(args.directory).records(decode=True):
            out.write(f"{rec.seq}\t{names.get(rec.kind, rec.kind)}\t")
            out.write(json.dumps(_jsonable(rec.payload), separators=(",", ":"), default=repr))
            out.write("\n")
    except CorruptLogError as exc:
        out.flush()
        print(f"CORRUPT: {exc}", file=sys.stderr)
        return EXIT_CORRUPT
    except BrokenPipeError:  # `| head`
        return 0
    return 0


def cmd_salvage(args: argparse.Namespace) -> int:
    from .repair import salvage

    report = salvage(args.directory)
    if report["problem"]:
        print(f"problem: {report['problem']}")
    if report.get("directory"):
        print(f"moved aside into {report['directory']}: {', '.join(report['moved']) or '(cut tail only)'}")
        if report["readable_after_gap"]:
            print(f"{report['readable_after_gap']} readable record(s) after the gap kept there "
                  "in readable-after-gap.msgpack")
    else:
        print("nothing to salvage: the log is valid")
    print(f"the log now ends at seq {report['kept_last_seq']}")
    return 0
