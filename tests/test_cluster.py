"""Cluster mode against a real etcd and real node processes (issue #6).

Every test gets its own cluster name in one etcd per module, three (or two)
``wheelsched serve`` processes sharing one data root, lease TTL 2 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid

import pytest
from cluster_helpers import TTL, Cluster, Recorder, cluster_worker, require_etcd

from wheelsched.client import Client
from wheelsched.cluster.local import LocalEtcd
from wheelsched.errors import NotOwner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    require_etcd()
    server = LocalEtcd(tmp_path_factory.mktemp("etcd"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def cluster(tmp_path, etcd):
    c = Cluster(tmp_path, etcd, name=f"t{uuid.uuid4().hex[:8]}")
    yield c
    c.kill_all()


def _schedule(client: Client, n: int, delay: float, spread: float = 0.0, prefix: str = "j") -> set[str]:
    """n jobs due from ``delay`` s on, over ``spread`` s; returns the acknowledged ids."""
    specs = [{"queue": "q", "id": f"{prefix}-{i}", "delay": delay + spread * i / max(n, 1)}
             for i in range(n)]
    return {j.id for j in client.schedule_many(specs)}


def _every_job_fired_once(rec: Recorder, ids: set[str]) -> None:
    missing = rec.wait_for(ids, timeout=30)
    assert not missing, f"{len(missing)} jobs never fired, e.g. {sorted(missing)[:5]}"
    time.sleep(1.0)  # a second delivery would come now
    doubled = {i: n for i, n in rec.counts.items() if n > 1}
    assert not doubled, f"fired twice: {sorted(doubled)[:5]}"


def test_three_nodes_share_shards_client_routes_and_worker_gets_everything(cluster):
    for _ in range(3):
        cluster.add_node()
    serving = cluster.wait_balanced(3)
    assert sorted(len(v) for v in serving.values()) == [5, 5, 6]
    # every node answers the same map; epochs are the leader keys' revisions
    maps = [cluster.shard_map(n) for n in cluster.nodes]
    assert {tuple((s.shard, s.owner_node_id, s.epoch) for s in m.shards) for m in maps} \
        == {tuple((s.shard, s.owner_node_id, s.epoch) for s in maps[0].shards)}
    assert {n.node_id for n in maps[0].nodes} == {"n0", "n1", "n2"}

    # a node that does not own a job's shard redirects, naming the owner
    owners = {s.shard: s for s in maps[0].shards}
    from wheelsched.sharding import shard_of
    foreign = next(f"x{i}" for i in range(1000)
                   if owners[shard_of(f"x{i}", 16)].owner_node_id != "n0")
    with Client(cluster.nodes[0].target, timeout=5) as c:
        with pytest.raises(NotOwner) as exc:
            c._call_at(cluster.nodes[0].target, "scheduler", "GetJob",
                       __import__("wheelsched.v1.scheduler_pb2", fromlist=["x"]).GetJobRequest(id=foreign))
        assert exc.value.owner == owners[shard_of(foreign, 16)].owner_address

    # the client, seeded with one node, routes everything to the owners
    with Client(cluster.nodes[0].target, timeout=10) as c:
        ids = _schedule(c, 300, delay=1.0, spread=1.0)
        assert c.clustered
        assert len(ids) == 300
        got = c.get(foreign) if False else c.get("j-7")
        assert got.id == "j-7" and got.state == "SCHEDULED"
        cancelled = {f"j-{i}" for i in range(0, 300, 10)}
        for job_id in cancelled:
            assert c.cancel(job_id).state == "CANCELLED"
        listed = {j.id for j in c.list(page_size=37)}
        assert listed == ids
    # wheelsched cluster status: every node, every shard with its owner and epoch
    cli = [sys.executable, "-m", "wheelsched", "cluster", "status", "--target", cluster.nodes[2].target]
    data = json.loads(subprocess.run([*cli, "--json"], check=True, capture_output=True, text=True).stdout)
    assert {n["node_id"] for n in data["nodes"] if n["reachable"] and n["lease_valid"]} == {"n0", "n1", "n2"}
    assert [(s["shard"], s["owner"], s["epoch"]) for s in data["shards"]] == \
        [(s.shard, s.owner_node_id, s.epoch) for s in maps[0].shards]
    assert all(s["firing"] for s in data["shards"])
    assert sum(s["pending"] for s in data["shards"]) == 300 - len(cancelled)
    text = subprocess.run(cli, check=True, capture_output=True, text=True).stdout
    assert f"cluster {cluster.name}: 3 nodes, 16/16 shards owned, 16 firing" in text
    rec = Recorder()
    worker = cluster_worker(cluster, rec)
    try:
        missing = rec.wait_for(ids - cancelled, timeout=30)
        assert not missing
        time.sleep(0.5)
        assert not (set(rec.counts) & cancelled)
        assert max(rec.counts.values()) == 1  # nothing fired twice
        assert set(worker.workers) == {n.target for n in cluster.nodes}
    finally:
        worker.stop(timeout=5)


def test_kill9_owner_under_load_loses_nothing(cluster):
    for _ in range(3):
        cluster.add_node()
    cluster.wait_balanced(3)
    rec = Recorder()
    worker = cluster_worker(cluster, rec)
    acked: set[str] = set()
    try:
        with Client(cluster.seeds, timeout=15) as c:
            acked |= _schedule(c, 1500, delay=0.5, spread=6.0, prefix="a")
            victim = cluster.nodes[1]
            time.sleep(2.0)  # firing under way
            victim.kill()
            # keep scheduling through the failover: the client rides it out
            for k in range(10):
                acked |= _schedule(c, 50, delay=0.2, spread=1.0, prefix=f"b{k}")
                time.sleep(0.2)
        serving = cluster.wait_balanced(2, timeout=TTL + 15)
        assert "n1" not in serving
        missing = rec.wait_for(acked, timeout=30)
        assert not missing, f"{len(missing)} acknowledged jobs never fired, e.g. {sorted(missing)[:5]}"
    finally:
        worker.stop(timeout=5)


def test_graceful_shutdown_hands_over_with_nothing_missed_or_doubled(cluster):
    for _ in range(3):
        cluster.add_node()
    cluster.wait_balanced(3)
    rec = Recorder(handler=lambda d: time.sleep(0.01))
    worker = cluster_worker(cluster, rec)
    try:
        with Client(cluster.seeds, timeout=15) as c:
            ids = _schedule(c, 1200, delay=0.5, spread=5.0)
        time.sleep(2.0)
        assert cluster.nodes[2].terminate(timeout=30) == 0
        cluster.wait_balanced(2, timeout=15)
        _every_job_fired_once(rec, ids)
    finally:
        worker.stop(timeout=5)


def test_joining_node_rebalances_without_losing_or_doubling(cluster):
    for _ in range(2):
        cluster.add_node()
    cluster.wait_balanced(2)
    rec = Recorder(handler=lambda d: time.sleep(0.01))
    worker = cluster_worker(cluster, rec)
    try:
        with Client(cluster.seeds, timeout=15) as c:
            ids = _schedule(c, 1200, delay=0.5, spread=6.0)
        time.sleep(1.5)
        cluster.add_node()
        serving = cluster.wait_balanced(3, timeout=30)
        assert serving["n2"]
        _every_job_fired_once(rec, ids)
    finally:
        worker.stop(timeout=5)


def test_paused_node_is_fenced_after_its_shards_move(cluster):
    """SIGSTOP a node past its lease TTL: the others take its shards; once
    SIGCONT'd it fires nothing more for them and its late writes are refused."""
    from wheelsched.client import JobSpec
    from wheelsched.sharding import shard_of
    from wheelsched.v1 import scheduler_pb2

    for _ in range(3):
        cluster.add_node()
    cluster.wait_balanced(3)
    victim = cluster.nodes[1]
    before = {s.shard: s.epoch for s in cluster.shard_map().shards if s.owner_node_id == "n1"}
    assert before
    rec = Recorder()
    worker = cluster_worker(cluster, rec)
    others = [n for n in cluster.nodes if n is not victim]
    try:
        with Client(cluster.seeds, timeout=15) as c:
            ids = _schedule(c, 1500, delay=0.5, spread=7.0)
        time.sleep(1.5)
        # no transparent retries: the test wants the node's own first answer
        direct = Client(victim.target, timeout=15, channel_options=[("grpc.enable_retries", 0)])
        direct.status()  # the connection is up before the pause
        victim.pause()
        deadline = time.monotonic() + TTL + 15
        while True:  # its shards move to the two live nodes, under new epochs
            owners = {s.shard: s for s in cluster.shard_map(others[0]).shards}
            if all(s in owners and owners[s].owner_node_id != "n1" for s in before):
                break
            assert time.monotonic() < deadline, "shards of the paused node were not taken over"
            time.sleep(0.1)
        assert all(owners[s].epoch > before[s] for s in before)
        time.sleep(1.0)  # the new owners fire its jobs
        # A write for a shard it lost, sent to the paused node, is handled as
        # soon as it resumes — before it can rejoin the cluster and claim
        # shards anew: it must be refused (its shard log is fenced, its lease
        # is gone), never applied.
        stale_id = next(f"late-{i}" for i in range(10_000) if shard_of(f"late-{i}", 16) in before)
        outcome: list[BaseException | object] = []

        def send_late_write() -> None:
            spec = JobSpec(queue="q", id=stale_id, delay=1).to_proto()
            try:
                outcome.append(direct._call_at(victim.target, "scheduler", "ScheduleJob",
                                               scheduler_pb2.ScheduleJobRequest(job=spec)))
            except Exception as exc:
                outcome.append(exc)

        sender = threading.Thread(target=send_late_write)
        sender.start()
        time.sleep(0.5)  # the request waits in the paused node's socket
        resumed_at = time.monotonic()
        victim.resume()
        sender.join(20)
        direct.close()
        assert outcome and type(outcome[0]).__name__ in ("NotOwner", "Unavailable"), outcome
        missing = rec.wait_for(ids, timeout=30)
        assert not missing
        # ... and never applied anywhere
        with Client(cluster.seeds, timeout=10) as c, pytest.raises(Exception) as nf:
            c.get(stale_id)
        assert type(nf.value).__name__ == "NotFound"
        # nothing dispatched by the paused node under its old epochs after it
        # resumed (0.3 s covers dispatches already in its socket when stopped)
        late = [(t, i) for t, i, shard, epoch in rec.log
                if before.get(shard) == epoch and t > resumed_at + 0.3]
        assert not late, f"dispatched after losing the shard: {late[:5]}"
        assert "lost" in victim.log_text()
    finally:
        worker.stop(timeout=5)
    # the logs of every shard stay readable: restart the nodes, nothing lost
    for node in cluster.nodes:
        node.terminate(timeout=30)
    for node in cluster.nodes:
        node.start()
    cluster.wait_balanced(3, timeout=30)
    with Client(cluster.seeds, timeout=15) as c:
        states = {j.id: j.state for j in c.list(page_size=500)}
    assert set(ids) <= set(states)
    assert stale_id not in states


def test_etcd_outage_stops_firing_then_service_resumes(cluster):
    for _ in range(3):
        cluster.add_node()
    cluster.wait_balanced(3)
    rec = Recorder()
    worker = cluster_worker(cluster, rec)
    try:
        with Client(cluster.seeds, timeout=15) as c:
            ids = _schedule(c, 1000, delay=1.0, spread=9.0)
        time.sleep(2.0)
        stopped_at = time.monotonic()
        cluster.etcd.stop()
        time.sleep(2 * TTL + 1)
        # nobody fired once its lease could no longer be proven (TTL - TTL/4
        # after the last keep-alive, which was at most TTL/5 before the stop)
        during = [t for t, *_ in rec.log if stopped_at + TTL + 0.3 < t]
        assert not during, f"{len(during)} jobs fired while etcd was down"
        with Client(cluster.seeds, timeout=1) as c, pytest.raises(Exception) as refused:
            c.schedule("q", id="during-outage-x", delay=1)
        assert type(refused.value).__name__ in ("Unavailable", "NotOwner", "WheelschedError")
        cluster.etcd.start()
        cluster.wait_balanced(3, timeout=30)
        missing = rec.wait_for(ids, timeout=30)
        assert not missing
        with Client(cluster.seeds, timeout=15) as c:
            after = _schedule(c, 100, delay=0.2, prefix="after")
        assert not rec.wait_for(after, timeout=20)
    finally:
        worker.stop(timeout=5)


def test_dag_across_all_shards_completes_while_a_node_is_killed(cluster):
    """Job dependencies between nodes: a layered DAG over every shard runs in
    dependency order while one node is SIGKILLed (issue #8 in cluster mode)."""
    import random

    for _ in range(3):
        cluster.add_node()
    cluster.wait_balanced(3)
    rng = random.Random(8)
    layers = [[f"dag-{k}-{i}-{rng.getrandbits(32):08x}" for i in range(30)] for k in range(8)]
    after = {job_id: sorted(rng.sample(layers[k - 1], rng.randint(1, 3))) if k else []
             for k, layer in enumerate(layers) for job_id in layer}
    finished: dict[str, float] = {}
    started: dict[str, float] = {}
    lock = threading.Lock()

    def handler(d) -> None:
        with lock:
            started.setdefault(d.job_id, time.monotonic())
        time.sleep(0.01)
        with lock:
            finished.setdefault(d.job_id, time.monotonic())  # the first completion counts

    rec = Recorder(handler=handler)
    worker = cluster_worker(cluster, rec)
    try:
        with Client(cluster.seeds, timeout=20) as c:
            # a graph across nodes goes in dependencies first: each node checks
            # a dependency on another node's shard with that node
            for k, layer in enumerate(layers):
                c.schedule_many([{"queue": "q", "id": j, "delay": 1.0 + 0.4 * k, "after": after[j]}
                                 for j in layer])
            assert c.get(layers[-1][0]).state == "WAITING"
        time.sleep(2.5)
        cluster.nodes[2].kill()
        all_ids = set(after)
        missing = rec.wait_for(all_ids, timeout=60)
        assert not missing, f"{len(missing)} jobs never ran, e.g. {sorted(missing)[:3]}"
        with lock:
            early = [(j, d) for j, deps in after.items() for d in deps if started[j] <= finished[d]]
        assert not early, f"ran before a dependency finished: {early[:3]}"
    finally:
        worker.stop(timeout=5)
