"""The write-ahead log of a shard: segmented, CRC-framed, group-committed.

Every scheduling operation of a shard is appended here before it is applied
or acknowledged; replaying the newest snapshot plus the records after it
rebuilds exactly what was acknowledged. The engine hands the log opaque
msgpack-able payloads; the log knows nothing about what they mean.

On-disk format (version 1, all integers little-endian)
======================================================

A log is one directory holding:

``<first-seq:016x>.wal``   segments, named by the sequence number of their
                           first record (16 lowercase hex digits)
``<covered-seq:016x>.snap``  snapshots, named by the last seq they cover
``*.tmp``                  files being created; removed by recovery
``*.torn-<offset>``        bytes cut off a torn tail by recovery (kept for
                           forensics, never read again)
``LOCK``                   flock'ed by the process that has the log open
``salvaged-<time>/``       what ``wheelsched wal salvage`` moved aside

File header (segments and snapshots)::

    magic     8 bytes   b"WSWAL\\0\\r\\n" (segment) | b"WSSNP\\0\\r\\n" (snapshot)
    version   u16       1
    flags     u16       0 (reserved)
    meta_len  u32
    seq       u64       segment: first record's seq; snapshot: seq it covers
    meta      meta_len bytes of msgpack (e.g. {"shard": 3, "epoch": 7})
    crc       u32       CRC32C of everything above

Record (directly after the header, back to back, no padding)::

    crc       u32       CRC32C (Castagnoli) of the next 12 bytes + payload
    length    u32       payload bytes
    type_seq  u64       record type in the top 8 bits, seq in the low 56
    payload   length bytes of msgpack

Record types: 0 is never written (so zero-filled or preallocated space is
never a record); 1 OP (an engine operation), 2 SNAPSHOT_MARKER (in the log,
after a snapshot covering seq N is durable: payload {"covers": N, "file": name}),
3 SNAPSHOT_ITEM and 4 SNAPSHOT_END (in snapshot files; item seqs count 1..n,
the trailer's payload is n). 5..255 are reserved (e.g. epoch changes);
readers skip unknown types whose CRC is valid.

Sequence numbers start at 1 and increase by exactly one from record to record
and across segments (a snapshot marker takes one, so the seqs the engine sees
are increasing but may skip the marker's). A record never spans two segments;
a segment rolls once it would exceed ``segment_bytes`` (64 MiB by default),
after the finished segment was fsynced. New files are written as ``.tmp``,
fsynced, renamed into place, and the directory is fsynced after every
create, rename and delete.

Recovery (``replay()`` / ``open()``)
====================================

* Use the newest snapshot that validates completely (header CRC, every
  record CRC, the trailer's count) and that the segments continue; segments
  whose records are all covered by it are stale and deleted by ``open()``.
* Read the segments after it in order. Their headers must carry the seq in
  their name and continue the previous segment exactly: a gap, an overlap, a
  missing segment, a bad header or a bad record in any segment but the last
  raises ``CorruptLogError`` naming the file and offset. Nothing is changed.
* In the last segment, a bad record (partial header, record running past the
  end of the file, zeroed header, checksum mismatch) is a *torn tail* if no
  CRC-valid record with a later seq follows it anywhere in the file: the
  process or machine died mid-write, or the file system extended the file
  with zeros. ``open()`` copies the cut bytes to ``<segment>.torn-<offset>``,
  truncates the segment there and appends after it. A bad record followed by
  a valid one is corruption (``CorruptLogError``). Like LevelDB and RocksDB's
  default mode this is a heuristic: a bit flip inside the very last record is
  indistinguishable from a torn write and is cut (the bytes are kept aside).
* A snapshot is renamed into place only after the log was fsynced through
  the seq it covers, so a snapshot is never ahead of the log.

Durability per ``fsync`` policy
===============================

``always`` (default)
    ``wait_durable(seq)`` returns after an ``fdatasync`` that covers the
    record. Survives process crashes, OS crashes and power loss (given a disk
    that honours flushes). Group commit: one writer thread writes everything
    queued by all callers with one ``write`` and one ``fdatasync``.
``interval:<ms>``
    ``wait_durable`` returns once the record was written to the OS (page
    cache); the writer fsyncs at most every <ms> while there is unsynced data.
    Survives a process crash (SIGKILL included); an OS crash or power loss may
    lose up to the last <ms> of acknowledged records.
``never``
    Like ``interval`` but only rolls and ``close()`` fsync. Survives a process
    crash; an OS crash may lose everything since the last roll. For tests
    and benchmarks.

Whatever the policy, a failed ``write``/``fsync`` is fatal: the log refuses
every pending and later append with ``LogFailedError`` (the ``OSError`` as
its cause) and never retries; reopen and replay to continue. ``close()``
writes and fsyncs everything queued.
"""

from __future__ import annotations

from .decoder import Record
from .format import OP, SNAPSHOT, CorruptLogError, LogFailedError, WALError
from .log import WALOptions, WriteAheadLog

__all__ = [
    "OP",
    "SNAPSHOT",
    "CorruptLogError",
    "LogFailedError",
    "Record",
    "WALError",
    "WALOptions",
    "WriteAheadLog",
]
