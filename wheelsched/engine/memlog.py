"""An in-memory log with the write-ahead log's interface, for engine tests.

Payloads are round-tripped through msgpack exactly as the real log stores
them (tuples come back as lists, bytes as bytes), so an engine rebuilt from
a ``MemoryLog`` sees what it would see after a real replay. Everything is
durable at once; ``keep()`` hands the stored records to a new instance, the
way a restarted node finds its directory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgpack

from wheelsched.wal import OP, SNAPSHOT, Record
from wheelsched.wal.format import pack


class MemoryLog:
    def __init__(self, snapshot_every_records: int = 0,
                 stored: tuple[list[bytes], list[bytes], int] | None = None) -> None:
        self._snapshot: list[bytes] = []
        self._ops: list[bytes] = []  # ops after the snapshot
        self._snapshot_seq = 0
        if stored is not None:
            self._snapshot, self._ops, self._snapshot_seq = list(stored[0]), list(stored[1]), stored[2]
        self.last_seq = self._snapshot_seq + len(self._ops)
        self.durable_seq = self.last_seq
        self.snapshot_every_records = snapshot_every_records
        self.failed: BaseException | None = None
        self.snapshots_taken = 0

    def keep(self) -> tuple[list[bytes], list[bytes], int]:
        return self._snapshot, self._ops, self._snapshot_seq

    def replay(self, progress: Callable[[int, int, int], None] | None = None) -> Iterator[Record]:
        for raw in self._snapshot:
            yield Record(self._snapshot_seq, SNAPSHOT, msgpack.unpackb(raw))
        for i, raw in enumerate(self._ops, self._snapshot_seq + 1):
            yield Record(i, OP, msgpack.unpackb(raw))

    def replay_batches(self, progress=None) -> Iterator[tuple[int, int, list]]:
        """(kind, first_seq, payloads) chunks, as the write-ahead log yields them."""
        if self._snapshot:
            yield SNAPSHOT, self._snapshot_seq, [msgpack.unpackb(r) for r in self._snapshot]
        if self._ops:
            yield OP, self._snapshot_seq + 1, [msgpack.unpackb(r) for r in self._ops]

    def open(self) -> None:
        pass

    def append(self, payload: Any) -> int:
        if self.failed is not None:
            raise self.failed
        self._ops.append(pack(payload))
        self.last_seq += 1
        self.durable_seq = self.last_seq
        return self.last_seq

    def append_many(self, payloads: Iterable[Any]) -> int:
        for p in payloads:
            self.append(p)
        return self.last_seq

    async def wait_durable(self, seq: int, urgent: bool = True) -> None:
        if self.failed is not None:
            raise self.failed

    def wait_durable_sync(self, seq: int, timeout: float | None = None) -> bool:
        return True

    def snapshot_due(self) -> bool:
        return bool(self.snapshot_every_records) and len(self._ops) >= self.snapshot_every_records

    def snapshot(self, records: Iterable[Any]) -> bool:
        self._snapshot = [pack(r) for r in records]
        self._snapshot_seq = self.last_seq
        self._ops = []
        self.snapshots_taken += 1
        return True

    def wait_snapshot(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass
