"""A node without a network: the engine on a manual clock, with in-memory
or real write-ahead logs that survive a simulated restart."""

from __future__ import annotations

from pathlib import Path

from wheelsched.engine import US, Delivery, Engine, EngineConfig
from wheelsched.engine.memlog import MemoryLog
from wheelsched.wal import WALOptions, WriteAheadLog

T0 = 1_767_225_600 * US  # 2026-01-01T00:00:00Z


class ManualClock:
    def __init__(self, now_us: int = T0) -> None:
        self.now = now_us

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * US)


class Harness:
    """Builds engines over one set of logs; ``restart()`` is a crash and a
    recovery (whatever an engine applied was appended to its logs first)."""

    def __init__(self, wheel_cls, log_kind: str = "memory", tmp_path: Path | None = None,
                 config: EngineConfig | None = None, snapshot_every: int = 0, rand=lambda: 0.0) -> None:
        self.wheel_cls = wheel_cls
        self.log_kind = log_kind
        self.tmp_path = tmp_path
        self.config = config or EngineConfig(shard_count=4)
        self.snapshot_every = snapshot_every
        self.clock = ManualClock()
        self.rand = rand
        self._stored: dict[int, tuple] = {}
        self.logs: dict[int, object] = {}
        self.delivered: list[Delivery] = []
        self.engine = self._build()

    def _open_log(self, shard_id: int):
        if self.log_kind == "memory":
            log = MemoryLog(snapshot_every_records=self.snapshot_every, stored=self._stored.get(shard_id))
        else:
            opts = WALOptions(fsync="never", snapshot_every_records=self.snapshot_every or 1_000_000)
            log = WriteAheadLog(self.tmp_path / f"shard-{shard_id}", opts, meta={"shard": shard_id})
        self.logs[shard_id] = log
        return log

    def _build(self) -> Engine:
        engine = Engine(self.config, clock=self.clock, open_log=self._open_log,
                        wheel_factory=self.wheel_cls, rand=self.rand)
        self.stats, self.recovery_waits = engine.recover()
        return engine

    def restart(self) -> Engine:
        old = self.engine
        for shard in old.shards:
            if self.log_kind == "memory":
                self._stored[shard.id] = shard.log.keep()
            else:
                shard.log.wait_snapshot()
                shard.log.close()
        self.engine = self._build()
        return self.engine

    def subscribe(self, queues=("q",), max_in_flight: int = 100):
        return self.engine.subscribe(list(queues), max_in_flight, self.delivered.extend)

    def run(self, seconds: float, step: float = 0.01) -> None:
        """Advance the clock in steps, ticking at each (like the ticker)."""
        end = self.clock.now + int(seconds * US)
        while self.clock.now < end:
            self.clock.now = min(end, self.clock.now + int(step * US))
            self.engine.tick()

    def take(self) -> list[Delivery]:
        out, self.delivered[:] = list(self.delivered), []
        return out

    def close(self) -> None:
        for shard in self.engine.shards:
            shard.log.close()
