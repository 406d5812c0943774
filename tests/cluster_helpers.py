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

from wheelsched.client import Client, ClusterWorker
from wheelsched.cluster.localetcd import LocalEtcd, etcd_binary
from wheelsched.server.process import NodeProcess

TTL = 2  # seconds: etcd's minimum, so failover tests stay short


def require_etcd() -> None:
    if etcd_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("etcd is missing: scripts/ensure_etcd.sh should have installed it")
        pytest.skip("etcd not installed (bash scripts/ensure_etcd.sh)")


class Cluster:
    def __init__(self, tmp_path: Path, etcd: LocalEtcd, name: str, shards: int = 16,
                 ttl: int = TTL, **flags: object) -> None:
        self.tmp_path = tmp_path
        self.etcd = etcd
        self.name = name
        self.shards = shards
        self.data_root = tmp_path / "data"
        self.flags = {"etcd": etcd.endpoint, "cluster": name, "shards": shards, "lease_ttl": ttl,
                      "fsync": "always", "drain_seconds": 5, **flags}
        self.nodes: list[NodeProcess] = []

    def add_node(self) -> NodeProcess:
        i = len(self.nodes)
        node = NodeProcess(self.tmp_path, {**self.flags, "node_id": f"n{i}"},
                           data_dir=self.data_root, name=f"n{i}")
        self.nodes.append(node)
        return node.start()

    @property
    def seeds(self) -> str:
        return ",".join(n.target for n in self.nodes if n.running)

    def shard_map(self, via: NodeProcess | None = None):
        node = via or next(n for n in self.nodes if n.running)
        with Client(node.target, timeout=5) as c:
            return c.shard_map()

    def owners(self, via: NodeProcess | None = None) -> dict[int, str]:
        return {s.shard: s.owner_node_id for s in self.shard_map(via).shards}

    def serving_shards(self) -> dict[str, list[int]]:
        """node id -> shards it fires now (each node's own status)."""
        out = {}
        for node in self.nodes:
            if node.running:
                with Client(node.target, timeout=5) as c:
                    st = c.status()
                out[st.node_id] = sorted(s.shard for s in st.shards if s.firing)
        return out

    def wait_balanced(self, nodes: int, timeout: float = 30.0) -> dict[str, list[int]]:
        """Until every shard fires on exactly one node and each of ``nodes``
        nodes holds its fair share (floor..ceil of shards / nodes)."""
        low, high = self.shards // nodes, -(-self.shards // nodes)
        deadline = time.monotonic() + timeout
        while True:
            serving = self.serving_shards()
            fired = [s for shards in serving.values() for s in shards]
            if (sorted(fired) == list(range(self.shards)) and len(serving) == nodes
                    and all(low <= len(v) <= high for v in serving.values())):
                # and every node's view of etcd agrees (no hand-over under way)
                by_owner = {node: set(shards) for node, shards in serving.items()}
                views = [self.owners(n) for n in self.nodes if n.running]
                if all({s: o for s, o in v.items()} == {s: o for o, ss in by_owner.items() for s in ss}
                       for v in views):
                    return serving
            if time.monotonic() > deadline:
                raise AssertionError(f"not balanced after {timeout}s: {serving}")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


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
