"""A real cluster for tests: one etcd and N ``wheelsched serve`` processes
sharing one data root, plus a recording worker."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from wheelsched.client import ClusterWorker
from wheelsched.cluster.local import LocalCluster, LocalEtcd, etcd_binary

TTL = 2  # seconds: etcd's minimum, so failover tests stay short


def require_etcd() -> None:
    if etcd_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("etcd is missing: scripts/ensure_etcd.sh should have installed it")
        pytest.skip("etcd not installed (bash scripts/ensure_etcd.sh)")


def Cluster(tmp_path: Path, etcd: LocalEtcd, name: str, **kw: object) -> LocalCluster:
    return LocalCluster(tmp_path, etcd, name, ttl=TTL, **kw)


class Recorder:
    """A worker handler that notes every delivery: job id -> count, and
    which node and epoch delivered it when."""

    def __init__(self, handler: Callable | None = None) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.log: list[tuple[float, str, int, int]] = []  # (time, id, shard, epoch)
        self.handler = handler

    def __call__(self, delivery) -> None:
        with self.lock:
            self.counts[delivery.job_id] += 1
            self.log.append((time.monotonic(), delivery.job_id, delivery.shard, delivery.epoch))
        if self.handler is not None:
            self.handler(delivery)

    def wait_for(self, ids: set[str], timeout: float) -> set[str]:
        """Wait until every id was delivered; returns those still missing."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                missing = {i for i in ids if not self.counts[i]}
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.1)


def cluster_worker(cluster: Cluster, recorder: Recorder, queue: str = "q") -> ClusterWorker:
    return ClusterWorker(cluster.seeds, [queue], recorder, concurrency=8, max_in_flight=64,
                         refresh_seconds=0.3, reconnect_initial=0.05, reconnect_max=0.5).start()
