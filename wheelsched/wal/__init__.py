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
``*.tmp``                  files being created; removed by recovery (a fenced
                           writer names them ``<name>.<pid>-<random>.tmp``)
``*.torn-<offset>``        bytes cut off a torn tail by recovery (kept for
                           forensics, never read again)
``LOCK``                   flock'ed by the process that has the log open:
                           exclusively by a standalone writer, shared by a
                           fenced one (so the two modes exclude each other,
                           while a paused fenced writer never blocks a takeover)
``FENCE``                  cluster mode: the fence token of the writer that
                           owns the log (one line of text, e.g. "7 node-b")
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
  their name and continue the previous segment exactly: a gap, a missing
  segment, a bad header or a bad record in any segment but the last raises
  ``CorruptLogError`` naming the file and offset. Nothing is changed.
* Boundary rule: when segment i+1 exists, segment i ends with the record
  whose seq is first(i+1)-1; reading it stops there. Whatever follows in
  the file (late records of a deposed writer, a torn tail that a takeover
  left behind and its old writer maybe extended, zeros) is not part of the
  log: it is ignored, never an error, counted (``Recovery.past_boundary``,
  ``fenced_bytes``, ``fenced_records``) and listed by ``wheelsched wal
  verify``. Everything before the boundary is checked as above. The rule
  holds for every log, fenced or not: a roll ends segment i exactly at
  first(i+1)-1 (fsynced before i+1 exists), so in a log no deposed writer
  touched there is never anything past a boundary, and a reader (the CLI,
  or a standalone open of a directory a cluster wrote) need not know how
  the log was written.
* In the last segment, a bad record (partial header, record running past the
  end of the file, zeroed header, checksum mismatch) is a *torn tail* if no
  CRC-valid record with a later seq follows it anywhere in the file: the
  process or machine died mid-write, or the file system extended the file
  with zeros. ``open()`` copies the cut bytes to ``<segment>.torn-<offset>``,
  truncates the segment there and appends after it (a fenced ``open()``
  leaves it in place instead, see below). A bad record followed by
  a valid one is corruption (``CorruptLogError``). Like LevelDB and RocksDB's
  default mode this is a heuristic: a bit flip inside the very last record is
  indistinguishable from a torn write and is cut (the bytes are kept aside).
* A snapshot is renamed into place only after the log was fsynced through
  the seq it covers, so a snapshot is never ahead of the log.

Cluster mode: fencing (``WriteAheadLog(..., fence=token)``)
===========================================================

In a cluster, a lease decides which node writes a shard's log. A node can
lose its lease without knowing (paused: SIGSTOP, GC, a stalled VM) and then
resume with its writer running. The fence makes such a deposed writer
harmless; the lease, not the fence, keeps two live writers apart.

* Taking over (``replay()``, or ``open()`` without replay): write the token
  to a temp file, fsync it, rename it over ``FENCE``, fsync the directory,
  and only then list and read the log. No exclusive lock is taken.
* Checking: a takeover always puts a new inode at ``FENCE``, so a writer
  holds the fence while ``stat(FENCE).st_ino`` is the inode it installed
  (it keeps that file open, so the number cannot be reused meanwhile). The
  writer looks before each batch it writes, after writing and syncing a
  batch and before acknowledging it, before linking a new segment into
  place, before installing a snapshot and before deleting anything: two
  ``stat`` calls per group-commit batch (a few microseconds), not per
  record. ``check_fence()`` does it for the owner. Once deposed, the log fails with ``FencedError`` (a
  ``LogFailedError``) for every pending and later append and wait, and
  writes, installs and deletes nothing more.
* Acknowledged records survive a takeover: a record is acknowledged only if
  the fence was still the writer's after it was written and synced, i.e.
  before the new fence existed, and the new owner reads the log after
  installing its fence. Records a deposed writer wrote but did not
  acknowledge may or may not be in the new owner's log (a failed append's
  outcome is unknown).
* A check and the write that follows are two system calls, so a writer
  paused between them lands one more batch after the takeover. So a new
  owner never writes to, truncates or replaces in place a segment an earlier
  writer may have open: ``open()`` always starts a new segment at last+1,
  which puts those late bytes past the old segment's boundary. A torn tail
  is left in place (it is past the boundary as soon as the new segment
  exists). If the last segment holds no record its name is the new
  segment's: it is replaced by an atomic rename, and a deposed writer still
  holding it writes to an unlinked file.
* The same pause can come between a check and a directory change. A fenced
  writer therefore prepares every file as a uniquely named temp file before
  its check, links segments into place with ``link`` (which never replaces
  a file), and a new owner removes the temp files it finds before creating
  anything, then checks that no segment appeared or changed since it listed
  the directory (if one did, ``open()`` raises and the caller replays
  again). A deposed writer's roll can thus only fail, or come before the
  new owner's listing or its check (and be seen). A late snapshot rename is
  consistent with the log (it covers records every later owner read), and
  the files a late deletion removes are covered by a snapshot for every
  later owner too.
* Whoever installed ``FENCE`` last owns the log; the file system cannot
  compare tokens. A node paused between deciding to take over and its
  rename can depose a newer owner; the log stays consistent (it reads after
  its rename), and the caller confirms its lease after ``open()``.
* All writers must see one coherent file system (one host, or shared storage
  with POSIX rename and read-after-write semantics).

Durability per ``fsync`` policy
===============================

``always`` (default)
    ``wait_durable(seq)`` returns after an ``fdatasync`` that covers the
    record. Survives process crashes, OS crashes and power loss (given a disk
    that honours flushes). Group commit: one writer thread writes everything
    queued by all callers with one ``write`` and one ``fdatasync``. A round
    nobody waits for is written but not synced: its records are synced by
    the next round with a waiter, or ``UNAWAITED_SYNC_SECONDS`` (20 ms)
    after they were written, whichever is first (a waiter that arrives after
    the write asks for its own fsync). ``wait_durable(seq, urgent=False)``
    and ``Committer.wait_all(..., urgent=False)`` wait without asking: for
    the next fsync, within the same bound. ``durable_seq`` counts only
    synced records. A node's ticks write records nobody waits for (the
    leases they hand out; an OS crash that loses them loses nothing anyone
    was told), and a worker's acks wait unhurried.
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
writes and fsyncs everything queued (a deposed log writes nothing).
"""

from __future__ import annotations

from .committer import Committer
from .decoder import Record
from .format import OP, SNAPSHOT, CorruptLogError, FencedError, LogFailedError, WALError
from .log import WALOptions, WriteAheadLog

__all__ = [
    "OP",
    "SNAPSHOT",
    "Committer",
    "CorruptLogError",
    "FencedError",
    "LogFailedError",
    "Record",
    "WALError",
    "WALOptions",
    "WriteAheadLog",
]
