"""A node's membership in a cluster: its etcd lease, its node key, and the
leader keys of the shards it holds (DESIGN §6).

One thread per node talks to etcd (the client is blocking); the node's event
loop never waits for etcd. The thread, every ``poll_seconds``:

1. keeps the lease alive (every ``ttl / 5``), or grants a new one and
   registers the node key if there is none (at start, or after the lease
   was found expired);
2. deletes the leader keys of shards the node finished handing over;
3. reads the cluster (one range read of the cluster's prefix): live nodes,
   and who holds which shard at which epoch;
4. checks the keys it believes it holds: one that is gone, or was
   re-created (another create_revision), is lost at once;
5. claims free shards / asks the node to release one (``balance.plan``).

Safety (no two nodes fire a shard): a leader key lives exactly as long as
the lease it was put with. The server ends a lease no sooner than ``TTL``
after it last saw a keep-alive, and a keep-alive that succeeded was sent no
earlier than when we started it, so the lease is alive at least until
``sent + TTL``. ``lease_valid()`` answers True only until
``sent + TTL - margin`` of the last successful keep-alive; the node fires,
dispatches and acknowledges writes only while it is True. The margin
(``TTL / 4``) covers a firing round that began just before the deadline and
clock-rate drift between hosts. When etcd is unreachable the node thus
stops firing within ``TTL - margin`` of the last keep-alive, and carries on
by itself if a keep-alive succeeds again before the server ended the lease;
if the server ended it, the keep-alive answers TTL 0: every shard is lost,
and the member starts over with a new lease (new epochs for whatever it
claims again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from wheelsched.cluster import balance
from wheelsched.cluster.etcd import Etcd, EtcdUnavailable, KeyValue

log = logging.getLogger("wheelsched.cluster")


class MemberEvents(Protocol):
    """What the member tells its node (called on the member's thread)."""

    def acquired(self, shard: int, epoch: int) -> None:
        """This node holds the shard's leader key under ``epoch``: load and serve it."""

    def lost(self, shards: list[int], reason: str) -> None:
        """Stop serving these shards at once (another node may hold them)."""

    def release_requested(self, shard: int) -> None:
        """Hand this shard over: drain it, then call ``ClusterMember.released``."""


@dataclass(frozen=True)
class Owner:
    node_id: str
    address: str
    epoch: int


@dataclass(frozen=True)
class ClusterView:
    """What the member last read from etcd."""

    nodes: dict[str, str] = field(default_factory=dict)  # node id -> address
    owners: dict[int, Owner] = field(default_factory=dict)  # shard -> owner
    read_at: float = 0.0  # monotonic


def prefix_of(cluster: str) -> str:
    return f"/wheelsched/{cluster}/"


def node_key(cluster: str, node_id: str) -> str:
    return f"{prefix_of(cluster)}nodes/{node_id}"


def shard_key(cluster: str, shard: int) -> str:
    return f"{prefix_of(cluster)}shards/{shard:04d}"


def parse_view(cluster: str, kvs: list[KeyValue], read_at: float) -> ClusterView:
    nodes_prefix = prefix_of(cluster) + "nodes/"
    shards_prefix = prefix_of(cluster) + "shards/"
    nodes, owners = {}, {}
    for kv in kvs:
        if kv.key.startswith(nodes_prefix):
            nodes[kv.key[len(nodes_prefix):]] = str(kv.value.get("address", ""))
        elif kv.key.startswith(shards_prefix) and kv.key[len(shards_prefix):].isdigit():
            owners[int(kv.key[len(shards_prefix):])] = Owner(
                str(kv.value.get("node_id", "")), str(kv.value.get("address", "")), kv.create_revision)
    return ClusterView(nodes, owners, read_at)


class ClusterMember:
    def __init__(self, etcd: Etcd, events: MemberEvents, *, cluster: str, node_id: str,
                 address: str, shard_count: int, ttl_seconds: int = 5,
                 poll_seconds: float = 0.2, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_seconds < 2:
            raise ValueError("lease TTL must be at least 2 s (etcd's minimum)")
        self.etcd = etcd
        self.events = events
        self.cluster = cluster
        self.node_id = node_id
        self.address = address
        self.shard_count = shard_count
        self.ttl = ttl_seconds
        self.margin = ttl_seconds / 4
        self.keepalive_every = ttl_seconds / 5
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.view = ClusterView()
        self.balancing = True  # False while leaving: claim nothing more
        self._lease = 0
        self._valid_until = 0.0
        self._next_keepalive = 0.0
        self._held: dict[int, int] = {}  # shard -> epoch (create_revision of our key)
        self._releasing: set[int] = set()
        self._released: list[int] = []
        self._cooldown: dict[int, float] = {}  # shard -> not claimed again before (monotonic)
        self._lock = threading.Lock()  # guards _released and _held against the node's calls
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._etcd_down_since = 0.0

    # -- read by the node (any thread) ----------------------------------------------

    def lease_valid(self) -> bool:
        return self.clock() < self._valid_until

    def holds(self, shard: int, epoch: int) -> bool:
        return self._held.get(shard) == epoch

    def owner_of(self, shard: int) -> tuple[str, int]:
        owner = self.view.owners.get(shard)
        return (owner.address, owner.epoch) if owner else ("", 0)

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="cluster-member", daemon=True)
        self._thread.start()

    def released(self, shard: int, retry_after: float = 0.0) -> None:
        """The node stopped serving ``shard`` and closed its log: give up the
        key. ``retry_after``: do not claim it again for that long (the node
        failed to load it; let another node try, and do not spin)."""
        with self._lock:
            self._released.append(shard)
            if retry_after:
                self._cooldown[shard] = self.clock() + retry_after
        self._wake.set()

    def leave(self) -> None:
        """Graceful exit, after the node closed every shard: revoking the lease
        deletes the node key and every leader key at once."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._lease:
            try:
                self.etcd.revoke(self._lease)
            except EtcdUnavailable as exc:
                log.warning("could not revoke the lease (%s); it ends in %d s", exc, self.ttl)
        self._held.clear()
        self.etcd.close()

    # -- the thread ---------------------------------------------------------------------

    def _main(self) -> None:
        while not self._stop:
            try:
                self._round()
                if self._etcd_down_since:
                    log.info("etcd reachable again after %.1f s", self.clock() - self._etcd_down_since,
                             extra={"event": "etcd_up"})
                    self._etcd_down_since = 0.0
            except EtcdUnavailable as exc:
                if not self._etcd_down_since:
                    self._etcd_down_since = self.clock()
                    log.warning("cannot reach etcd: %s; firing stops %.1f s after the last keep-alive "
                                "unless it comes back", exc, self.ttl - self.margin,
                                extra={"event": "etcd_down"})
            except Exception:  # a bug; keep the lease loop alive
                log.exception("cluster round failed")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def _round(self) -> None:
        etcd = self.etcd
        now = self.clock()
        if not self._lease:
            sent = self.clock()
            lease = etcd.grant(self.ttl)
            etcd.put(node_key(self.cluster, self.node_id), {"address": self.address}, lease)
            self._lease = lease
            self._valid_until = sent + self.ttl - self.margin
            self._next_keepalive = sent + self.keepalive_every
            log.info("joined cluster %s as %s (lease %x, TTL %d s)", self.cluster, self.node_id, lease,
                     self.ttl, extra={"event": "joined", "cluster": self.cluster, "lease": lease})
        elif now >= self._next_keepalive:
            sent = self.clock()
            self._next_keepalive = sent + self.keepalive_every
            if etcd.keepalive(self._lease) <= 0:
                self._lose_everything("lease expired in etcd")
                return
            self._valid_until = sent + self.ttl - self.margin

        with self._lock:
            released, self._released = self._released, []
        for shard in released:
            epoch = self._held.get(shard)
            if epoch is not None:
                etcd.delete_if_created_at(shard_key(self.cluster, shard), epoch)
                with self._lock:
                    self._held.pop(shard, None)
            self._releasing.discard(shard)
            log.info("released shard %d", shard, extra={"event": "shard_released", "shard": shard})

        self.view = view = parse_view(self.cluster, etcd.list(prefix_of(self.cluster)), self.clock())
        gone = [s for s, epoch in self._held.items()
                if (o := view.owners.get(s)) is None or o.epoch != epoch]
        if gone:
            with self._lock:
                for s in gone:
                    self._held.pop(s, None)
                    self._releasing.discard(s)
            self.events.lost(gone, "leader key gone or re-created")
        if not self.balancing or not self.lease_valid():
            return
        owners = {s: o.node_id for s, o in view.owners.items()}
        if self._cooldown:
            now = self.clock()
            with self._lock:
                self._cooldown = {s: t for s, t in self._cooldown.items() if t > now}
                for s in self._cooldown:  # as if held by nobody we may take from
                    owners.setdefault(s, "")
        claim, release = balance.plan(self.node_id, self.shard_count, owners, view.nodes)
        for shard in claim:
            epoch = etcd.claim(shard_key(self.cluster, shard),
                               {"node_id": self.node_id, "address": self.address}, self._lease)
            if epoch:
                with self._lock:
                    self._held[shard] = epoch
                log.info("claimed shard %d at epoch %d", shard, epoch,
                         extra={"event": "shard_claimed", "shard": shard, "epoch": epoch})
                self.events.acquired(shard, epoch)
        if release is not None and not self._releasing:
            self._releasing.add(release)
            self.events.release_requested(release)

    def _lose_everything(self, reason: str) -> None:
        with self._lock:
            shards = sorted(self._held)
            self._held.clear()
            self._releasing.clear()
        self._lease = 0
        self._valid_until = 0.0
        log.warning("lost every shard (%s): %s", reason, shards,
                    extra={"event": "shards_lost", "reason": reason, "shards": shards})
        if shards:
            self.events.lost(shards, reason)
