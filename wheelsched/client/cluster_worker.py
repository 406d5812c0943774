"""A worker for a cluster: one ``Worker`` stream per node, following the map.

Any node may own shards whose jobs are in the worker's queues (queues are
not sharded; jobs are), so the worker streams from every live node. Every
``refresh_seconds`` it reads the shard map from any node it knows and opens
a stream to each node that joined; a node that left the map (stopped, or its
lease ran out) has its stream stopped after its handlers finish. Acks go
back on the stream a job came from: only the node that dispatched a lease
can settle it (another owner, under a newer epoch, redelivers instead).

Each per-node ``Worker`` has its own ``concurrency`` handler threads and
``max_in_flight`` credit, so with N nodes up to N times as many jobs run at
once; size them per node.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from wheelsched.client.client import Client
from wheelsched.client.worker import Handler, Worker

log = logging.getLogger("wheelsched.client.worker")

COUNTERS = ("received", "succeeded", "failed", "ack_errors", "acks_resent", "extended",
            "extension_errors", "nacked", "reconnects")


class ClusterWorker:
    def __init__(self, target: str, queues: Sequence[str] | str, handler: Handler, *,
                 refresh_seconds: float = 1.0, **worker_options: Any) -> None:
        client_options = {k: worker_options[k] for k in
                          ("credentials", "metadata", "channel_options", "tls_ca", "tls_cert",
                           "tls_key", "token") if k in worker_options}
        self._client = Client(target, timeout=2.0, **client_options)
        self.queues = queues
        self.handler = handler
        self.refresh_seconds = refresh_seconds
        self._options = worker_options
        self.workers: dict[str, Worker] = {}  # address -> its stream's worker
        self._retired: list[Worker] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Fail now (bad queue names, handler, ...), not in the background.
        Worker(target.split(",")[0], queues, handler, **worker_options)

    def __getattr__(self, name: str) -> int:
        if name in COUNTERS:  # summed over every stream, past ones included
            with self._lock:
                return sum(getattr(w, name) for w in [*self.workers.values(), *self._retired])
        raise AttributeError(name)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return sum(w.in_flight for w in self.workers.values())

    def start(self) -> ClusterWorker:
        self.refresh()
        self._thread = threading.Thread(target=self._follow, name="wheelsched-cluster-worker",
                                        daemon=True)
        self._thread.start()
        return self

    def refresh(self) -> None:
        """Open streams to new nodes and retire those of nodes that left."""
        cmap = self._client.refresh_shard_map()
        if cmap is None:
            return  # no node answered; keep what we have
        if cmap.cluster:
            addresses = {n.address for n in cmap.nodes}
        else:
            addresses = {self._client._seeds[0]}
        with self._lock:
            gone = [a for a in self.workers if a not in addresses]
            new = [a for a in sorted(addresses) if a not in self.workers]
            for address in new:
                self.workers[address] = Worker(address, self.queues, self.handler,
                                               **self._options).start()
            retired = [self.workers.pop(a) for a in gone]
            self._retired.extend(retired)
        for address in new:
            log.info("streaming from %s", address)
        for worker in retired:
            threading.Thread(target=worker.stop, kwargs={"timeout": 5.0}, daemon=True).start()

    def _follow(self) -> None:
        while not self._stopping.wait(self.refresh_seconds):
            try:
                self.refresh()
            except Exception:  # keep following; the next round tries again
                log.exception("refreshing the shard map failed")

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            workers = [*self.workers.values(), *self._retired]
        threads = [threading.Thread(target=w.stop, kwargs={"timeout": timeout}) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + 15)
        self._client.close()

    def __enter__(self) -> ClusterWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
