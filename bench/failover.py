"""Failover: how fast a dead node's shards fire again, and the cluster's fire rate.

Takeover (per lease TTL, 2 s and 5 s by default): a 3-node cluster (one
etcd, 16 shards, one data root, fsync ``always``) gets ``--pending`` jobs due
in an hour in the shards of one node (the victim), plus probe jobs in those
shards due every 10 ms from before the kill to well after it. A worker
streams from every node. The victim is SIGKILLed, and the run reports:

- takeover = first delivery of a probe under a new epoch - the SIGKILL;
- lost = acknowledged probes that never fired, and whether every pending
  job is still there (the new owners' ``pending`` counts);
- stale dispatches = deliveries under the victim's epochs after the new
  owner's first fire (must be 0).

Fire rate (per node count, 1..3, and a standalone node as the baseline in
the same run): ``--rate-jobs`` jobs all due at one instant, drained by one
``ClusterWorker`` (or ``Worker``) in this process; rate = jobs / (last - first
delivery). All processes share this machine's cores, so more nodes add
CPU contention as well as capacity.

    python -m bench.failover [--quick] [--json PATH]
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench._common import Progress, base_parser, print_table, ratio, write_json
from wheelsched.client import Client, ClusterWorker, Worker
from wheelsched.cluster.local import LocalCluster, LocalEtcd, etcd_binary
from wheelsched.server.process import NodeProcess
from wheelsched.sharding import shard_of

SHARDS = 16
PROBE_EVERY = 0.010


class Deliveries:
    """Every delivery's receipt time, shard and epoch (handler is this object)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, int] = {}
        self.log: list[tuple[float, str, int, int]] = []

    def __call__(self, d: Any) -> None:
        now = time.monotonic()
        with self.lock:
            self.seen[d.job_id] = self.seen.get(d.job_id, 0) + 1
            self.log.append((now, d.job_id, d.shard, d.epoch))


def _ids_in(shards: set[int], prefix: str, n: int) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        job_id = f"{prefix}-{i}"
        if shard_of(job_id, SHARDS) in shards:
            out.append(job_id)
        i += 1
    return out


def takeover(root: Path, etcd: LocalEtcd, ttl: int, pending: int) -> dict[str, Any]:
    cluster = LocalCluster(root, etcd, f"fo{uuid.uuid4().hex[:6]}", shards=SHARDS, ttl=ttl)
    try:
        for _ in range(3):
            cluster.add_node()
        cluster.wait_balanced(3, timeout=60)
        victim = cluster.nodes[1]
        old = {s.shard: s.epoch for s in cluster.shard_map().shards if s.owner_node_id == "n1"}
        shards = set(old)
        rec = Deliveries()
        worker = ClusterWorker(cluster.seeds, ["q"], rec, concurrency=4, max_in_flight=500,
                               refresh_seconds=0.3, reconnect_initial=0.05, reconnect_max=0.5).start()
        probe_span = ttl + 6.0
        with Client(cluster.seeds, timeout=30) as c:
            bar = Progress(f"pending jobs (TTL {ttl} s)", pending)
            far = _ids_in(shards, "far", pending)
            for start in range(0, pending, 5000):
                c.schedule_many([{"queue": "parked", "id": i, "delay": 3600}
                                 for i in far[start : start + 5000]], chunk=1000)
                bar.update(start + 5000)
            bar.close()
            n_probes = int(probe_span / PROBE_EVERY)
            probes = _ids_in(shards, "probe", n_probes)
            t0 = time.monotonic() + 1.0
            c.schedule_many([{"queue": "q", "id": p, "delay": 1.0 + k * PROBE_EVERY}
                             for k, p in enumerate(probes)])
        time.sleep(max(0.0, t0 + 1.0 - time.monotonic()))
        killed_at = time.monotonic()
        victim.kill()
        deadline = killed_at + probe_span + 30
        new_epoch_first = None
        while time.monotonic() < deadline:
            with rec.lock:
                firsts = [t for t, _, shard, epoch in rec.log
                          if shard in shards and epoch != old[shard] and t >= killed_at]
                delivered = sum(1 for p in probes if p in rec.seen)
            if firsts and new_epoch_first is None:
                new_epoch_first = min(firsts)
            if delivered == len(probes):
                break
            time.sleep(0.1)
        worker.stop(timeout=5)
        stale = sum(1 for t, _, shard, epoch in rec.log
                    if shard in shards and epoch == old[shard] and new_epoch_first
                    and t > new_epoch_first)
        statuses = [c2.status() for c2 in
                    [Client(n.target, timeout=5) for n in cluster.nodes if n.running]]
        parked = sum(s.pending for st in statuses for s in st.shards if s.shard in shards)
        lost = sum(1 for p in probes if p not in rec.seen)
        return {"ttl_s": ttl, "pending_jobs": pending, "victim_shards": len(shards),
                "takeover_s": round(new_epoch_first - killed_at, 3) if new_epoch_first else None,
                "target_s": ttl + 1, "probes": len(probes), "lost": lost,
                "pending_after": parked, "stale_dispatches": stale}
    finally:
        cluster.kill_all()


def _drain_rate(target: str, jobs: int, cluster: bool) -> float:
    rec = Deliveries()
    opts = {"concurrency": 8, "max_in_flight": 2000}
    worker = (ClusterWorker(target, ["r"], rec, refresh_seconds=0.5, **opts) if cluster
              else Worker(target, ["r"], rec, **opts)).start()
    try:
        with Client(target, timeout=60) as c:
            due = time.time() + 2.0 + jobs / 20_000
            ids = [f"r-{uuid.uuid4().hex[:10]}-{i}" for i in range(jobs)]
            for start in range(0, jobs, 5000):
                c.schedule_many([{"queue": "r", "id": i, "due": due} for i in ids[start:start + 5000]])
        deadline = time.monotonic() + 120
        while len(rec.seen) < jobs and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop(timeout=5)
    times = sorted(t for t, *_ in rec.log)
    if len(rec.seen) < jobs or len(times) < 2:
        return 0.0
    return jobs / (times[-1] - times[0])


def fire_rates(root: Path, etcd: LocalEtcd, jobs: int) -> list[dict[str, Any]]:
    rows = []
    node = NodeProcess(root / "standalone", {"shards": SHARDS, "fsync": "always"})
    node.tmp_path.mkdir(parents=True, exist_ok=True)
    try:
        node.start()
        rows.append({"nodes": "standalone", "fires_per_s": round(_drain_rate(node.target, jobs, False))})
    finally:
        node.kill()
    for n in (1, 2, 3):
        cluster = LocalCluster(root / f"rate{n}", etcd, f"rate{n}{uuid.uuid4().hex[:6]}", shards=SHARDS)
        try:
            for _ in range(n):
                cluster.add_node()
            cluster.wait_balanced(n, timeout=60)
            rows.append({"nodes": n, "fires_per_s": round(_drain_rate(cluster.seeds, jobs, True))})
        finally:
            cluster.kill_all()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--ttl", type=int, action="append", help="lease TTLs to test (default 2 and 5)")
    p.add_argument("--pending", type=int, default=None, help="jobs parked in the victim's shards "
                   "(default 100,000; --quick 10,000)")
    p.add_argument("--rate-jobs", type=int, default=None, help="jobs per fire-rate run "
                   "(default 30,000; --quick 5,000)")
    p.add_argument("--no-rates", action="store_true", help="skip the fire-rate runs")
    args = p.parse_args(argv)
    if etcd_binary() is None:
        print("error: etcd not found (bash scripts/ensure_etcd.sh installs Debian's etcd-server)")
        return 2
    ttls = args.ttl or [2, 5]
    pending = args.pending if args.pending is not None else 10_000 if args.quick else 100_000
    rate_jobs = args.rate_jobs if args.rate_jobs is not None else 5_000 if args.quick else 30_000
    with tempfile.TemporaryDirectory(prefix="wheelsched-failover-") as tmp:
        root = Path(tmp)
        with LocalEtcd(root / "etcd") as etcd:
            results = [takeover(root / f"ttl{ttl}", etcd, ttl, pending) for ttl in ttls]
            rates = [] if args.no_rates else fire_rates(root, etcd, rate_jobs)
    print_table("Takeover after SIGKILL of a shard owner (3 nodes, 16 shards)",
                ["TTL s", "victim shards", "pending jobs", "takeover s", "target s", "probes",
                 "lost", "pending after", "stale dispatches"],
                [[r["ttl_s"], r["victim_shards"], r["pending_jobs"], r["takeover_s"], r["target_s"],
                  r["probes"], r["lost"], r["pending_after"], r["stale_dispatches"]] for r in results])
    if rates:
        base = rates[0]["fires_per_s"]
        print_table(f"Fire rate, {rate_jobs:,} jobs due at once, one worker process",
                    ["nodes", "fires/s", "vs standalone"],
                    [[str(r["nodes"]), r["fires_per_s"], ratio(r["fires_per_s"], base)] for r in rates])
    ok = all(r["takeover_s"] is not None and r["takeover_s"] <= r["target_s"] and r["lost"] == 0
             and r["stale_dispatches"] == 0 and r["pending_after"] >= r["pending_jobs"] for r in results)
    print(f"\n  {'OK' if ok else 'MISSED'}: takeover <= TTL + 1 s, 0 lost, 0 stale dispatches")
    write_json(args.json, {"benchmark": "failover", "args": vars(args),
                           "takeover": results, "fire_rates": rates})
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
