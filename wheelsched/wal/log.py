"""``WriteAheadLog``: appending, group commit, rolling, snapshots.

Threads:

* callers (any thread or asyncio task) encode their records in ``append``
  and frame them (``format.frame_into``: in C, one allocation per record)
  onto a queue under a short lock that also assigns the sequence numbers,
  so queue order == seq order;
* ONE writer thread (a ``Committer``, committer.py; shared by all of a
  node's logs, or private to this log) takes everything queued, writes it
  with one ``write`` (splitting only at a segment roll), fsyncs once per the
  policy and publishes the new durable seq: one ``notify_all`` for thread
  waiters and at most one ``loop.call_soon_threadsafe`` per event loop that
  has waiters;
* at most one snapshot thread at a time.

A write or fsync error is fatal: after a failed fsync Linux may have dropped
the dirty pages and cleared the error, so a retry could "succeed" without the
data (the PostgreSQL fsync lesson). The log fails every pending and later
append with ``LogFailedError``; the way back is to reopen and replay.

Cluster mode (a fence token): the writer compares ``FENCE``'s inode with its
own once before each batch it writes and once before it publishes what it
wrote and synced, and before every segment it links into place, snapshot it
installs and file it deletes. Once another writer has taken over, the log
fails with ``FencedError`` (a ``LogFailedError``) and touches nothing more.
The package docstring explains why this is enough.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import fcntl
import heapq
import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import repair
from .committer import Committer
from .decoder import Batch, ProgressFn, Record, Recovery, _make_record, segment_inodes
from .format import (
    FENCE_NAME,
    LOCK_NAME,
    SEGMENT_MAGIC,
    SNAPSHOT,
    SNAPSHOT_MAGIC,
    T_OP,
    T_SNAPSHOT_END,
    T_SNAPSHOT_ITEM,
    T_SNAPSHOT_MARKER,
    TMP_SUFFIX,
    FencedError,
    LogFailedError,
    WALError,
    encode_file_header,
    frame,
    frame_into,
    pack,
    packer,
    segment_name,
    snapshot_name,
)

log = logging.getLogger("wheelsched.wal")

_SNAPSHOT_CHUNK = 1 << 20  # bytes of framed snapshot records per write()

# Statistics buckets (upper bounds): fsync latency in seconds, group-commit
# batch size in records. The last slot of each count list is the +Inf bucket.
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

# ``always``: how long written records may stay unsynced when nobody waits
# for them, or only unhurried waiters do (``wait_durable(urgent=False)``). A
# node's tick appends records no caller awaits (the leases it hands out,
# lease expiries), and a worker's acks need their confirmation soon, not
# at once; a round that fsyncs each shard log some caller touched cost a
# node at 5,000-10,000 jobs/s ~2,000-3,000 fdatasyncs/s on this machine's
# disk, and the disk I/O costs the VM steal. Losing unawaited records in
# an OS crash changes nothing a caller was told: the recovering node ends
# every lease it finds, as it would have. 20 ms bounds how late an
# unhurried waiter hears, and so how far a log's durable seq lags.
UNAWAITED_SYNC_SECONDS = 0.02


@dataclass(frozen=True)
class WALOptions:
    segment_bytes: int = 64 << 20
    fsync: str = "always"  # "always" | "interval:<ms>" | "never"
    snapshot_every_records: int = 1_000_000
    snapshot_every_bytes: int = 256 << 20
    # an fsync taking longer than this is counted as slow (stats())
    slow_fsync_seconds: float = 0.1

    def __post_init__(self) -> None:
        self.policy()  # validate early
        if self.segment_bytes < 4096:
            raise ValueError("segment_bytes must be at least 4096")
        if self.slow_fsync_seconds < 0:
            raise ValueError("slow_fsync_seconds must not be negative")

    def policy(self) -> tuple[str, float]:
        """("always" | "interval" | "never", interval in seconds)."""
        f = self.fsync
        if f in ("always", "never"):
            return f, 0.0
        if f.startswith("interval:"):
            try:
                ms = float(f.split(":", 1)[1])
            except ValueError:
                ms = -1.0
            if ms > 0:
                return "interval", ms / 1000.0
        raise ValueError(f"fsync policy must be 'always', 'interval:<ms>' or 'never', not {f!r}")


class WriteAheadLog:
    """A segmented, CRC-framed, group-committed log. See the package
    docstring for the format and the guarantees; the API is::

        log = WriteAheadLog(dir, WALOptions(...), meta={...})
        for rec in log.replay(): ...      # optional
        log.open()
        seq = log.append(payload); await log.wait_durable(seq)
        log.close()

    ``fence=None`` (standalone): the directory is flock'ed exclusively while
    the log is in use. With a fence token (cluster mode, e.g. ``"<epoch>
    <node>"``; the meta should carry the epoch too) there is no exclusive
    lock: ``replay()`` (or ``open()`` when replay is skipped) first installs
    the token as ``FENCE``, which deposes any previous writer, and ``open()``
    appends in a new segment of its own. Mutual exclusion of live writers is
    the caller's (e.g. a lease); the fence makes a writer that lost it harmless.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        options: WALOptions | None = None,
        meta: Any = None,
        fence: str | None = None,
        *,
        committer: Committer | None = None,
        _faults: Any = None,
    ) -> None:
        self.directory = Path(directory)
        self.options = options or WALOptions()
        self.meta = meta
        pack(meta)  # fail now, not at the first roll, if meta cannot be encoded
        if fence is not None and (not isinstance(fence, str) or not fence.strip() or "\n" in fence):
            raise ValueError(f"fence must be a non-empty one-line string, not {fence!r}")
        self.fence = fence
        self._fence_path = os.fspath(self.directory / FENCE_NAME)
        self._fence_fd = -1  # held open so the inode number cannot be reused while we compare it
        self._fence_id: tuple[int, int] | None = None  # (st_ino, st_dev) of our FENCE, once installed
        # Fenced writers name their temp files uniquely: two writers of one
        # directory (a deposed one and its successor) must never open, write
        # or rename the same temp file.
        self._tmp_tag = "" if fence is None else f".{os.getpid()}-{secrets.token_hex(4)}"
        self._mode, self._interval = self.options.policy()
        # test-only fault injection: an object with .hit(point) that may raise
        # or kill the process; checked with one attribute test off the hot path
        self._faults = _faults
        self._recovery: Recovery | None = None
        self._lock_fd = -1
        self._opened = False
        self._closed = False

        # append queue (guarded by _qlock)
        self._qlock = threading.Lock()
        self._accepting = False
        self._refusal: Callable[[], Exception] = lambda: WALError("log is not open (call open())")
        self._pending: list[bytes] = []
        self._pending_first = 1
        self._last_seq = 0
        self._queued = False  # on the committer's ready list (or being taken)
        self._closing = False
        self._sync_requests = 0
        self._sync_wanted = 0  # ``always``: the highest seq a waiter needs fsynced
        self._snap_records = 0
        self._snap_bytes = 0
        self._snap_running = False

        # durability (guarded by _dlock)
        self._dlock = threading.Lock()
        self._dcv = threading.Condition(self._dlock)
        self._durable_seq = 0
        self._synced_seq = 0
        self._failed: LogFailedError | None = None
        self._loops: dict[asyncio.AbstractEventLoop, list[tuple[int, int, asyncio.Future[None]]]] = {}
        self._scheduled: set[asyncio.AbstractEventLoop] = set()
        self._tiebreak = itertools.count()

        # segments (list guarded by _seg_lock; fd/size owned by the writer)
        self._seg_lock = threading.Lock()
        self._segments: list[tuple[int, Path]] = []
        self._fd = -1
        self._seg_size = 0
        self._seg_header = 0
        self._written_seq = 0
        self._next_fsync = 0.0
        self._committer = committer
        self._own_committer = committer is None
        self._writer_done = threading.Event()  # the committer is finished with this log
        self._snap_thread: threading.Thread | None = None
        self._snap_error: BaseException | None = None
        self._covered = 0

        # statistics (stats()): written by the writer thread once per batch
        # or fsync, and by the (single) snapshot thread; read racily
        self._st_batches = 0
        self._st_records = 0
        self._st_bytes = 0
        self._st_batch_max = 0
        self._st_batch_counts = [0] * (len(BATCH_BUCKETS) + 1)
        self._st_fsyncs = 0
        self._st_fsync_sum = 0.0
        self._st_fsync_max = 0.0
        self._st_fsync_counts = [0] * (len(FSYNC_BUCKETS) + 1)
        self._st_slow = 0
        # (n, seconds) of the latest slow fsyncs, n counting from 1; appended
        # by the writer only (deque.append is atomic), read by the node's
        # event logger to report the slowest of an interval
        self.slow_fsyncs: collections.deque[tuple[int, float]] = collections.deque(maxlen=64)
        self._st_snapshots = 0
        self._st_snap_seconds = 0.0
        self._st_snap_records = 0
        self._st_snap_last: tuple[int, float] = (0, 0.0)  # records, seconds

    # ------------------------------------------------------------------ properties
    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def durable_seq(self) -> int:
        return self._durable_seq

    @property
    def failed(self) -> BaseException | None:
        return self._failed

    @property
    def fenced(self) -> bool:
        """True once this writer saw that another one took the log over (it
        looks when it writes, rolls, snapshots or ``check_fence()`` runs)."""
        return isinstance(self._failed, FencedError)

    def __enter__(self) -> WriteAheadLog:
        if not self._opened:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _hit(self, point: str) -> None:
        if self._faults is not None:
            self._faults.hit(point)

    # ------------------------------------------------------------------ claiming the directory
    def _claim(self) -> None:
        """Make the directory ours before reading it: standalone, flock it;
        fenced, install our fence (every earlier writer is deposed from here on)."""
        if self.fence is None:
            self._lock_dir()
        else:
            self._install_fence()

    def _make_dir(self) -> None:
        created = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        if created:
            repair.fsync_dir(self.directory.parent)

    def _flock(self, how: int, refusal: str) -> None:
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise WALError(f"{self.directory}: {refusal}") from exc
        self._lock_fd = fd

    def _lock_dir(self) -> None:
        if self._lock_fd >= 0:
            return
        self._make_dir()
        self._flock(fcntl.LOCK_EX, "log is in use by another process")

    def _install_fence(self) -> None:
        """Write our token to a temp file, fsync it, rename it over FENCE and
        fsync the directory. A takeover always renames a new file over FENCE,
        so FENCE's inode tells whether we still hold it; we keep our file
        open so that its inode number cannot be reused while we compare."""
        if self._fence_fd >= 0:
            return
        self._make_dir()
        # Shared, not exclusive: a paused fenced writer holding it does not
        # block a takeover, but a standalone writer (exclusive) and fenced
        # writers never use one directory at the same time.
        self._flock(fcntl.LOCK_SH, "log is in use by a standalone (unfenced) writer")
        assert self.fence is not None
        tmp = self.directory / f"{FENCE_NAME}{self._tmp_tag}{TMP_SUFFIX}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_fd(fd, f"{self.fence}\n".encode())
            os.fsync(fd)
            st = os.fstat(fd)
            os.rename(tmp, self._fence_path)
            self._hit("fence.after_rename")
            repair.fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._fence_fd = fd
        self._fence_id = (st.st_ino, st.st_dev)

    def _fence_held(self) -> bool:
        try:
            st = os.stat(self._fence_path)
        except FileNotFoundError:
            return False
        return st.st_ino == self._fence_id[0] and st.st_dev == self._fence_id[1]  # type: ignore[index]

    def _fence_held_or_unknown(self) -> bool:
        try:
            return self._fence_held()
        except OSError:
            return True

    def _deposed(self) -> FencedError:
        try:
            holder = Path(self._fence_path).read_text().strip()
        except OSError:
            holder = ""
        return FencedError(
            f"write-ahead log {self.directory} was taken over "
            f"({FENCE_NAME} holds {holder!r}, this writer's fence is {self.fence!r}): "
            "this writer was deposed and writes nothing more"
        )

    def _require_fence(self) -> None:
        """Raise FencedError (failing the log) unless FENCE is still ours."""
        if self._fence_held():
            return
        err = self._deposed()
        self._fail(err)
        raise FencedError(str(err))  # a fresh instance per raise, as _failure()

    def check_fence(self) -> None:
        """Raise ``FencedError`` if another writer took the log over (one
        ``stat``); the log then fails as if its writer had noticed. No-op
        for a standalone log and before the fence is installed."""
        if self._fence_id is None:
            return
        if isinstance(self._failed, FencedError):
            raise self._failure()
        self._require_fence()

    # ------------------------------------------------------------------ recovery

    def replay(self, progress: ProgressFn | None = None) -> Iterator[Record]:
        """Yield the snapshot's items (kind SNAPSHOT, seq = the seq it covers),
        then every OP after it in seq order. Read-only: the repairs it finds
        necessary (torn tail, temp files) are made by open(). With a fence
        token it first installs the fence: reading the log is taking it over
        (what a writer acknowledged before is then guaranteed to be read)."""
        for kind, first, payloads in self.replay_batches(progress):
            seqs = itertools.repeat(first) if kind == SNAPSHOT else itertools.count(first)
            yield from map(_make_record, zip(seqs, itertools.repeat(kind), payloads))

    def replay_batches(self, progress: ProgressFn | None = None) -> Iterator[Batch]:
        """``replay()`` in batches, without a Python object per record:
        ``(kind, first_seq, payloads)``. The snapshot's items come as one
        SNAPSHOT batch in which every item's seq is ``first_seq`` (the seq
        the snapshot covers); each OP batch's payloads carry the consecutive
        seqs ``first_seq, first_seq + 1, ...``. Same checks, same errors."""
        if self._opened:
            raise WALError("replay() must be called before open()")
        self._claim()
        self._recovery = None
        rec = Recovery(self.directory)
        yield from rec.batches(decode=True, progress=progress)
        self._recovery = rec

    def open(self) -> None:
        """Recover (if replay() did not run to the end) and start appending.

        Standalone: cut a torn tail and append to the last segment (a new one
        when ``meta`` changed). Fenced: install the fence unless replay() did,
        then always start a new segment (see ``_open_fenced``)."""
        if self._opened:
            raise WALError("log already opened")
        self._claim()
        rec = self._recovery
        if rec is None or not rec.complete:
            rec = Recovery(self.directory).run(decode=False)
        self._recovery = None
        for warning in rec.snapshot_warnings:
            log.warning("wal: ignoring snapshot: %s", warning)
        if rec.past_boundary:
            log.info("wal: ignoring %d byte(s) (%d record(s)) past segment boundaries in %s",
                     rec.fenced_bytes, rec.fenced_records, self.directory)
        if self.fence is None:
            self._open_standalone(rec)
        else:
            self._open_fenced(rec)
        self._snap_bytes = self._seg_size
        self._next_fsync = time.monotonic() + self._interval
        with self._qlock:
            self._accepting = True
        if self._committer is None:
            self._committer = Committer()
        self._committer.attach(self)
        self._opened = True

    def _adopt(self, rec: Recovery) -> int:
        """Take over what recovery found: segments, snapshot coverage and the
        seqs (everything recovered is durable). Returns the last seq."""
        self._covered = rec.covered
        self._segments = list(rec.segments)
        last = rec.last_seq
        self._last_seq = self._written_seq = self._durable_seq = self._synced_seq = last
        self._pending_first = last + 1
        self._snap_records = last - rec.covered
        return last

    def _open_standalone(self, rec: Recovery) -> None:
        if rec.temps:
            repair.remove_files(self.directory, rec.temps)
        if rec.tail is not None:
            side = repair.truncate_tail(rec.tail)
            log.warning(
                "wal: torn tail in %s at offset %d (%s): cut %d bytes, kept in %s",
                rec.tail.path, rec.tail.offset, rec.tail.reason,
                rec.tail.size - rec.tail.offset, side.name,
            )
        repair.remove_files(self.directory, rec.stale_segments + rec.stale_snapshots)
        last = self._adopt(rec)
        if self._segments:
            first, path = self._segments[-1]
            empty = last < first  # no records in the last segment
            if rec.meta != self.meta and empty:
                # an empty last segment with stale meta: replace it (same name)
                self._segments.pop()
                self._create_segment(first)
            else:
                self._fd = os.open(path, os.O_WRONLY)
                self._seg_size = os.lseek(self._fd, 0, os.SEEK_END)
                self._seg_header = self._seg_size if empty else 0
                if rec.meta != self.meta:
                    self._roll(last + 1)  # new meta (e.g. a new epoch): new segment
        else:
            self._create_segment(last + 1)

    def _open_fenced(self, rec: Recovery) -> None:
        """Start appending in a new segment that no earlier writer ever had
        open. The last segment may still be open in a deposed writer, which
        can land one more batch in it after our fence (it checks, then
        writes); a segment after it makes those bytes past its boundary, so
        nothing of ours is ever written to, truncated in or replaced in a
        file another writer may write. A torn tail is therefore left where
        it is: once our segment exists it is past the boundary too."""
        self._require_fence()  # deposed while recovering: change nothing
        if rec.temps:
            # Includes what a deposed writer prepared before our fence: with
            # its temp files gone, nothing it renames or links later can land
            # (it creates a temp file first and checks the fence after).
            repair.remove_files(self.directory, rec.temps)
        # Covered by the snapshot recovery chose; stale for every writer.
        repair.remove_files(self.directory, rec.stale_segments + rec.stale_snapshots)
        last = self._adopt(rec)
        # The last segment holds no record: ours must take its name. Replace
        # it atomically (rename); a deposed writer that still has it open
        # then writes to an unlinked file, which no reader will ever see.
        replace = bool(self._segments) and self._segments[-1][0] == last + 1
        if replace:
            self._segments.pop()
        if rec.tail is not None:
            if replace:
                side = repair.keep_tail_aside(rec.tail)
                kept = f"kept in {side.name}"
            else:
                kept = "left in place, past the boundary of the new segment"
            log.warning("wal: torn tail in %s at offset %d (%s): %d bytes %s",
                        rec.tail.path, rec.tail.offset, rec.tail.reason,
                        rec.tail.size - rec.tail.offset, kept)
        stale = {p.name for p in rec.stale_segments}
        listed = {name: ino for name, ino in rec.layout.segment_inodes.items() if name not in stale}

        def unchanged_since_recovery() -> None:
            # A deposed writer may have renamed or linked a segment into
            # place after we listed the directory (it passed its fence check
            # just before our fence). Our replay did not see it: refuse, the
            # caller replays again. Temp files are gone by now, so nothing
            # of a deposed writer can appear after this check.
            now = segment_inodes(self.directory)
            if now != listed:
                changed = sorted(set(now.items()) ^ set(listed.items()))
                raise WALError(
                    f"{self.directory}: segments changed while the log was recovered "
                    f"({', '.join(name for name, _ in changed)}); a deposed writer was still "
                    "active: replay and open again"
                )

        self._create_segment(last + 1, replace=replace, before_install=unchanged_since_recovery)

    # ------------------------------------------------------------------ appending
    def append(self, payload: Any) -> int:
        return self._append(T_OP, [pack(payload)])

    def append_many(self, payloads: Iterable[Any]) -> int:
        return self._append(T_OP, list(map(packer(), payloads)))

    def _append_internal(self, rtype: int, payload: Any) -> int:
        return self._append(rtype, [pack(payload)])

    def _append(self, rtype: int, datas: list[bytes]) -> int:
        """Queue encoded records; returns the last one's seq. The callers
        encode before the lock (an unencodable payload changes nothing); the
        frames are built under it, where the seqs are handed out."""
        with self._qlock:
            if not self._accepting:
                raise self._refusal()
            seq = self._last_seq
            size = frame_into(self._pending, datas, seq, rtype)
            seq += len(datas)
            self._last_seq = seq
            if rtype == T_OP:  # what a snapshot would replace (not its markers)
                self._snap_records += len(datas)
                self._snap_bytes += size
            if datas and not self._queued:
                self._queued = True
                self._committer.wake(self)  # type: ignore[union-attr]  # open: accepting
        return seq

    # ------------------------------------------------------------------ waiting
    def _failure(self) -> LogFailedError:
        """A fresh exception per raise (one instance raised in many threads
        would share and mangle its traceback)."""
        assert self._failed is not None
        err = type(self._failed)(str(self._failed))  # LogFailedError or FencedError
        err.__cause__ = self._failed.__cause__
        return err

    def _check_waitable(self, seq: int) -> None:
        """Raise if waiting for ``seq`` could never end: the log failed, or
        ``seq`` was never appended."""
        if self._failed is not None:
            raise self._failure()
        if seq > self._last_seq:
            raise WALError(f"seq {seq} was never appended (last is {self._last_seq})")

    async def wait_durable(self, seq: int, urgent: bool = True) -> None:
        """Until ``seq`` is durable. ``urgent=False``: the caller can wait
        for the log's next fsync, within ``UNAWAITED_SYNC_SECONDS``, rather
        than ask for one now (``always``; the other policies do not fsync
        for waiters)."""
        if seq <= self._durable_seq:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._dlock:
            if seq <= self._durable_seq:
                return
            self._check_waitable(seq)
            heap = self._loops.get(loop)
            if heap is None:
                heap = self._loops[loop] = []
            heapq.heappush(heap, (seq, next(self._tiebreak), fut))
        if urgent:
            self._want_sync(seq)
        await fut

    def wait_durable_sync(self, seq: int, timeout: float | None = None) -> bool:
        if seq <= self._durable_seq:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        self._want_sync(seq)
        with self._dcv:
            while seq > self._durable_seq:
                self._check_waitable(seq)
                if deadline is None:
                    self._dcv.wait()
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._dcv.wait(left)
        return True

    def _want_sync(self, seq: int) -> None:
        """``always``: a waiter needs ``seq`` fsynced (see
        ``UNAWAITED_SYNC_SECONDS``). The round that takes the queue reads
        ``_sync_wanted`` after it wrote; a waiter that comes after that
        round took the queue starts another round here. Without the lock
        when an earlier waiter already asked for ``seq`` or later: that
        request's round syncs everything written up to it, ``seq`` too."""
        if self._mode != "always" or seq <= self._sync_wanted:
            return
        with self._qlock:
            if seq > self._sync_wanted:
                self._sync_wanted = seq
                if not self._queued and self._accepting:
                    self._queued = True
                    self._committer.wake(self)  # type: ignore[union-attr]  # accepting: open

    def _wake_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        # runs in `loop`'s thread: resolve every waiter the durable seq covers
        fail: list[asyncio.Future[None]] = []
        ready: list[asyncio.Future[None]] = []
        with self._dlock:
            self._scheduled.discard(loop)
            heap = self._loops.get(loop)
            if not heap:
                return
            durable = self._durable_seq
            while heap and heap[0][0] <= durable:
                ready.append(heapq.heappop(heap)[2])
            if self._failed is not None and heap:
                fail = [entry[2] for entry in heap]
                heap.clear()
        for fut in ready:
            if not fut.done():
                fut.set_result(None)
        for fut in fail:
            if not fut.done():
                fut.set_exception(self._failure())

    def _publish(self, durable: int, synced: int) -> None:
        wake: list[asyncio.AbstractEventLoop] = []
        with self._dcv:
            self._durable_seq = durable
            self._synced_seq = synced
            self._dcv.notify_all()
            failed = self._failed is not None
            for loop, heap in self._loops.items():
                if heap and (failed or heap[0][0] <= durable) and loop not in self._scheduled:
                    self._scheduled.add(loop)
                    wake.append(loop)
        for loop in wake:
            try:
                loop.call_soon_threadsafe(self._wake_loop, loop)
            except RuntimeError:  # loop closed: its waiters are gone with it
                with self._dlock:
                    self._loops.pop(loop, None)
                    self._scheduled.discard(loop)

    # ------------------------------------------------------------------ writer
    # The three steps of a commit round, run on the committer's thread (see
    # committer.py): write (every log of the round), fsync, publish. A step
    # that fails fails this log (and it leaves the committer); it returns
    # None then, and the round goes on without it.

    def _finish(self) -> None:
        """The committer is done with this log: closed and drained, or failed."""
        if not self._writer_done.is_set():
            self._writer_done.set()
            self._committer._detach(self)  # type: ignore[union-attr]

    def _step_failed(self, exc: BaseException) -> None:
        """Any writer failure is fatal for the log: fail it, and let go of it."""
        self._fail(exc)
        self._finish()

    def _commit_write(self) -> tuple[int, bool, int] | None:
        """Take the queue and write it: (records written, closing, sync requests)."""
        with self._qlock:
            self._queued = False
            if self._failed is not None or self._writer_done.is_set():
                failed = True
            else:
                failed = False
                batch = self._pending
                first = self._pending_first
                self._pending = []
                self._pending_first = first + len(batch)
                closing = self._closing
                sync_req = self._sync_requests
                self._sync_requests = 0
        if failed:
            self._finish()  # failed elsewhere (e.g. check_fence): write nothing more
            return None
        n = len(batch)
        if n:
            try:
                if self._fence_id is not None:
                    self._require_fence()  # a deposed writer writes nothing
                self._hit("write.before_write")  # fence confirmed, nothing written yet
                size = self._write_batch(batch, first)
            except BaseException as exc:  # any writer failure is fatal for the log
                self._step_failed(exc)
                return None
            if self._written_seq <= self._synced_seq and self._mode == "always":
                self._next_fsync = time.monotonic() + UNAWAITED_SYNC_SECONDS  # all synced until now
            self._written_seq = first + n - 1
            self._st_batches += 1
            self._st_records += n
            self._st_bytes += size
            self._st_batch_counts[bisect.bisect_left(BATCH_BUCKETS, n)] += 1
            if n > self._st_batch_max:
                self._st_batch_max = n
        return n, closing, sync_req

    def _fsync_due(self, state: tuple[int, bool, int]) -> bool:
        """Whether ``_commit_sync`` will fsync: written data not yet synced,
        and the policy (or a close or sync request) asks for it now:
        ``always`` when a waiter needs it or the unawaited bound is up."""
        _, closing, sync_req = state
        synced = self._synced_seq
        if self._written_seq <= synced:
            return False
        mode = self._mode
        return bool(closing or sync_req or (mode == "always" and self._sync_wanted > synced)
                    or (mode != "never" and time.monotonic() >= self._next_fsync))

    def _commit_sync(self, state: tuple[int, bool, int]) -> int | None:
        """fsync if due (``_fsync_due``): the synced seq."""
        _, _, sync_req = state
        synced = self._synced_seq
        if self._written_seq > synced:
            mode = self._mode
            if self._fsync_due(state):
                try:
                    self._fsync()
                except BaseException as exc:
                    self._step_failed(exc)
                    return None
                synced = self._written_seq
                if mode == "interval":
                    self._next_fsync = time.monotonic() + self._interval
            elif sync_req:
                synced = self._written_seq
        return synced

    def _commit_publish(self, state: tuple[int, bool, int], synced: int) -> bool:
        """Release the waiters of what is now durable. True: a timed fsync
        is still owed (the committer wakes at ``_next_fsync``)."""
        _, closing, sync_req = state
        mode = self._mode
        durable = synced if mode == "always" else self._written_seq
        if durable != self._durable_seq or synced != self._synced_seq or sync_req:
            if self._fence_id is not None:
                # Acknowledge only what was written (and synced) while the
                # fence was ours: a takeover installs its fence before it
                # reads, so it reads all of it.
                try:
                    self._require_fence()
                except BaseException as exc:
                    self._step_failed(exc)
                    return False
            self._publish(durable, synced)
        if closing:
            with self._qlock:
                drained = not self._pending
                if not drained and not self._queued:
                    self._queued = True
                    self._committer.wake(self)  # type: ignore[union-attr]
            if drained:
                self._finish()
                return False
        return mode != "never" and self._written_seq > self._synced_seq

    def _fsync(self) -> None:
        self._hit("fsync")
        t = time.perf_counter()
        os.fdatasync(self._fd)
        took = time.perf_counter() - t
        self._st_fsyncs += 1
        self._st_fsync_sum += took
        self._st_fsync_counts[bisect.bisect_left(FSYNC_BUCKETS, took)] += 1
        if took > self._st_fsync_max:
            self._st_fsync_max = took
        if took > self.options.slow_fsync_seconds:
            self._st_slow += 1
            self.slow_fsyncs.append((self._st_slow, took))

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def _write_batch(self, batch: list[bytes], first: int) -> int:
        """Write the batch; returns its size in bytes."""
        limit = self.options.segment_bytes
        total = sum(map(len, batch))
        if self._seg_size + total <= limit:
            self._write_all(b"".join(batch) if len(batch) > 1 else batch[0])
            self._seg_size += total
            self._hit("write.after_write")
            return total
        # slow path: split at segment boundaries; a record never spans two
        # segments, and a record larger than a segment gets one of its own
        i, n = 0, len(batch)
        while i < n:
            room = limit - self._seg_size
            j, size = i, 0
            while j < n and size + len(batch[j]) <= room:
                size += len(batch[j])
                j += 1
            if j == i and self._seg_size == self._seg_header:
                size, j = len(batch[i]), i + 1
            if j == i:
                self._roll(first + i)
                continue
            self._write_all(b"".join(batch[i:j]))
            self._seg_size += size
            i = j
        self._hit("write.after_write")
        return total

    def _roll(self, next_seq: int) -> None:
        if self._fence_id is not None:
            self._require_fence()
        # the finished segment must be complete on disk before a later one
        # exists: recovery treats a bad record in a non-last segment as
        # corruption, never as a torn tail
        self._hit("roll.before_fsync_old")
        os.fdatasync(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._create_segment(next_seq)

    def _create_segment(
        self, first_seq: int, *, replace: bool = False,
        before_install: Callable[[], None] | None = None,
    ) -> None:
        path = self.directory / segment_name(first_seq)
        tmp = path.with_name(path.name + self._tmp_tag + TMP_SUFFIX)
        header = encode_file_header(SEGMENT_MAGIC, first_seq, self.meta)
        fenced = self._fence_id is not None
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | (os.O_EXCL if fenced else os.O_TRUNC), 0o644)
        try:
            view = memoryview(header)
            while view:
                view = view[os.write(fd, view) :]
            self._hit("roll.after_tmp_write")
            os.fsync(fd)
            self._hit("roll.after_tmp_fsync")
            if fenced:
                if before_install is not None:
                    before_install()
                self._install_segment_fenced(tmp, path, replace)
            else:
                os.rename(tmp, path)
            self._hit("roll.after_rename")
            repair.fsync_dir(self.directory)
            self._hit("roll.after_dirsync")
        except BaseException:
            os.close(fd)
            if fenced:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            raise
        self._fd = fd
        self._seg_size = self._seg_header = len(header)
        with self._seg_lock:
            self._segments.append((first_seq, path))

    def _install_segment_fenced(self, tmp: Path, path: Path, replace: bool) -> None:
        """Put a prepared segment in place, unless we were deposed. The temp
        file exists before the check: a writer that passes the check and
        stalls before linking has its temp file removed by the takeover's
        open(), so the link fails instead of landing in the new owner's log.
        ``os.link`` never replaces: a name that exists belongs to a writer
        that took over after reading everything we wrote."""
        self._require_fence()
        self._hit("fence.before_install")
        if replace:
            os.rename(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            self._require_fence()
            raise
        os.unlink(tmp)

    def _fail(self, exc: BaseException) -> None:
        """Refuse every pending and later append; the first failure sticks."""
        if isinstance(exc, FencedError):
            err: LogFailedError = exc
        elif self._fence_id is not None and not self._fence_held_or_unknown():
            # e.g. our roll's temp file was removed by the takeover: that
            # is being deposed, not a broken disk
            err = self._deposed()
            err.__cause__ = exc
        else:
            if isinstance(exc, OSError):
                what = f"{exc.strerror or exc} ({type(exc).__name__}, errno {exc.errno})"
            else:
                what = f"{type(exc).__name__}: {exc}"
            err = LogFailedError(
                f"write-ahead log {self.directory} failed and refuses appends: {what}; "
                "reopen and replay to continue"
            )
            err.__cause__ = exc
        with self._qlock:
            first = self._failed is None
            if first:
                self._failed = err
                self._accepting = False
                self._refusal = self._failure
                self._pending = []
        if not first:
            return
        if isinstance(err, FencedError):
            log.warning("wal: %s", err)
        else:
            log.error("wal: %s", err)
        self._publish(self._durable_seq, self._synced_seq)
        if self._committer is not None:
            self._committer._release_barriers()

    # ------------------------------------------------------------------ snapshots
    def snapshot_due(self) -> bool:
        o = self.options
        return self._snap_records >= o.snapshot_every_records or self._snap_bytes >= o.snapshot_every_bytes

    def snapshot(self, records: Iterable[Any]) -> bool:
        with self._qlock:
            if not self._accepting:
                raise self._refusal()
            if self._snap_running:
                return False
            self._snap_running = True
            covered = self._last_seq
            self._snap_records = 0
            self._snap_bytes = 0
        self._snap_error = None
        t = threading.Thread(
            target=self._snapshot_main, args=(records, covered), name="wal-snapshot", daemon=True
        )
        self._snap_thread = t
        t.start()
        return True

    def wait_snapshot(self, timeout: float | None = None) -> bool:
        """Wait for the in-flight snapshot. True when none is running (any
        more); raises WALError if it failed (the log itself carries on)."""
        t = self._snap_thread
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                return False
        err = self._snap_error
        if err is not None:
            self._snap_error = None
            if isinstance(err, FencedError):
                raise FencedError(str(err)) from err
            raise WALError(f"snapshot failed: {err}") from err
        return True

    def _request_sync(self, seq: int) -> None:
        """Block until the log is fsynced through ``seq`` (whatever the policy)."""
        with self._qlock:
            self._sync_requests += 1
            if not self._queued and not self._writer_done.is_set():
                self._queued = True
                self._committer.wake(self)  # type: ignore[union-attr]
        with self._dcv:
            while self._synced_seq < seq:
                if self._failed is not None:
                    raise self._failure()
                self._dcv.wait(0.5)

    def _snapshot_main(self, records: Iterable[Any], covered: int) -> None:
        path = self.directory / snapshot_name(covered)
        tmp = path.with_name(path.name + self._tmp_tag + TMP_SUFFIX)
        fenced = self._fence_id is not None
        started = time.perf_counter()
        count = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                chunk: list[bytes] = [encode_file_header(SNAPSHOT_MAGIC, covered, self.meta)]
                size = 0
                count = 0
                packb = packer()
                for item in records:
                    count += 1
                    data = packb(item)
                    chunk.append(frame(T_SNAPSHOT_ITEM, count, data))
                    size += len(data) + 16
                    if size >= _SNAPSHOT_CHUNK:
                        _write_fd(fd, b"".join(chunk))
                        chunk.clear()
                        size = 0
                        time.sleep(0)  # let the fire path have the GIL between chunks
                chunk.append(frame(T_SNAPSHOT_END, count + 1, pack(count)))
                _write_fd(fd, b"".join(chunk))
                self._hit("snapshot.after_write")
                # the snapshot reflects every record <= covered: those must be
                # on disk in the log before the snapshot may replace them,
                # otherwise a crash could leave a snapshot ahead of the log
                self._request_sync(covered)
                self._hit("snapshot.before_fsync")
                os.fsync(fd)
                self._hit("snapshot.after_fsync")
            finally:
                os.close(fd)
            if fenced:
                self._require_fence()  # a deposed writer's snapshot is never installed
                self._hit("fence.before_snapshot_rename")
            os.rename(tmp, path)
            self._hit("snapshot.after_rename")
            repair.fsync_dir(self.directory)
            self._hit("snapshot.after_dirsync")
            marker = self._append_internal(T_SNAPSHOT_MARKER, {"covers": covered, "file": path.name})
            self.wait_durable_sync(marker)
            self._hit("snapshot.after_marker")
            self._covered = covered
            if fenced:
                self._require_fence()  # a deposed writer deletes nothing
            with self._seg_lock:
                segs = self._segments
                drop = 0
                while drop + 1 < len(segs) and segs[drop + 1][0] <= covered + 1:
                    drop += 1
                stale = [p for _, p in segs[:drop]]
                del segs[:drop]
            self._hit("snapshot.before_delete_segments")
            repair.remove_files(self.directory, stale)
            self._hit("snapshot.after_delete_segments")
            if fenced:
                self._require_fence()
            old = [
                self.directory / e.name
                for e in os.scandir(self.directory)
                if e.name.endswith(".snap") and e.name < path.name
            ]
            repair.remove_files(self.directory, old)
            self._hit("snapshot.after_delete_snapshots")
            took = time.perf_counter() - started
            self._st_snap_last = (count, took)
            self._st_snap_records += count
            self._st_snap_seconds += took
            self._st_snapshots += 1
        except BaseException as exc:  # reported through wait_snapshot
            self._snap_error = exc
            log.error("wal: snapshot covering seq %d failed: %s", covered, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
        finally:
            with self._qlock:
                self._snap_running = False

    # ------------------------------------------------------------------ statistics
    def stats(self) -> dict[str, Any]:
        """Counters since open (a racy but consistent-enough sample: each
        value is written by one thread, the writer or the snapshot thread).

        Bucket lists hold per-bucket (not cumulative) counts for the upper
        bounds ``FSYNC_BUCKETS`` / ``BATCH_BUCKETS`` plus a last +Inf slot."""
        last_records, last_seconds = self._st_snap_last
        return {
            "batches": self._st_batches,
            "records_written": self._st_records,
            "bytes_written": self._st_bytes,
            "batch_max": self._st_batch_max,
            "batch_buckets": list(self._st_batch_counts),
            "fsyncs": self._st_fsyncs,
            "fsync_seconds": self._st_fsync_sum,
            "fsync_max_seconds": self._st_fsync_max,
            "fsync_buckets": list(self._st_fsync_counts),
            "slow_fsyncs": self._st_slow,
            "slow_fsync_threshold_seconds": self.options.slow_fsync_seconds,
            "snapshots": self._st_snapshots,
            "snapshot_seconds": self._st_snap_seconds,
            "snapshot_records": self._st_snap_records,
            "last_snapshot_records": last_records,
            "last_snapshot_seconds": last_seconds,
        }

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Write and fsync everything queued, stop the writer. Idempotent."""
        if self._closed:
            return
        t = self._snap_thread
        if t is not None:
            t.join()
        with self._qlock:
            self._closing = True
            if self._failed is None:
                self._refusal = lambda: LogFailedError("write-ahead log is closed")
            self._accepting = False
            if self._opened and not self._queued and not self._writer_done.is_set():
                self._queued = True
                self._committer.wake(self)  # type: ignore[union-attr]
        if self._opened:
            self._writer_done.wait()  # written, synced and published: the committer let go
        if self._own_committer and self._committer is not None:
            self._committer.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._fence_fd >= 0:
            os.close(self._fence_fd)
            self._fence_fd = -1
        self._closed = True


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
