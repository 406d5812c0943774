"""Issue #7: Prometheus /metrics and structured logs, against a real node."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from pathlib import Path

import pytest
from node_helpers import NodeProcess, running_node, wait_until
from prometheus_client.parser import text_string_to_metric_families

from wheelsched import errors
from wheelsched.client import Client, Worker

_METRICS = re.compile(r"metrics on (\S+):(\d+)/metrics")


def metrics_url(node: NodeProcess) -> str:
    match = _METRICS.search(node.log_text())
    assert match, node.log_tail()
    return f"http://{match.group(1)}:{match.group(2)}/metrics"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value}"""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))




def test_metrics_count_exactly_what_happened(tmp_path: Path) -> None:
    shards = 4
    with running_node(tmp_path, fsync="never", shards=shards, metrics="127.0.0.1:0",
                      log_format="json") as node:
        url = metrics_url(node)
        before = scrape(url)
        assert total(before, "wheelsched_serving") == 1
        assert total(before, "wheelsched_shard_owned") == shards
        assert total(before, "wheelsched_replay_seconds") >= 0

        queue = f"m-{uuid.uuid4().hex[:8]}"
        n_run, n_cancel = 25, 3
        acked = []
        with Client(node.target) as client:
            client.schedule_many([{"queue": queue, "id": f"{queue}-{i}", "delay": 0.05}
                                  for i in range(n_run)])
            for i in range(n_cancel):
                client.schedule(queue=queue, id=f"{queue}-c{i}", delay=3600)
                client.cancel(f"{queue}-c{i}")
            with pytest.raises(errors.NotFound):
                client.get("no-such-job")
            mid = scrape(url)
            # scheduled and cancelled are counted when the RPCs answer
            assert total(mid, "wheelsched_jobs_scheduled_total") - \
                total(before, "wheelsched_jobs_scheduled_total") == n_run + n_cancel
            assert total(mid, "wheelsched_jobs_cancelled_total") - \
                total(before, "wheelsched_jobs_cancelled_total") == n_cancel

            with Worker(node.target, [queue], lambda d: acked.append(d.job_id), concurrency=4):
                assert wait_until(lambda: len(acked) == n_run, 20.0), len(acked)
                assert wait_until(lambda: total(scrape(url), "wheelsched_jobs_succeeded_total")
                                  - total(before, "wheelsched_jobs_succeeded_total") == n_run, 20.0)
                after = scrape(url)
                assert total(after, "wheelsched_worker_streams") == 1

        def delta(name: str) -> float:
            return total(after, name) - total(before, name)

        assert delta("wheelsched_jobs_scheduled_total") == n_run + n_cancel
        assert delta("wheelsched_jobs_fired_total") == n_run
        assert delta("wheelsched_jobs_dispatched_total") == n_run
        assert delta("wheelsched_jobs_succeeded_total") == n_run
        assert delta("wheelsched_jobs_failed_total") == 0
        assert delta("wheelsched_jobs_cancelled_total") == n_cancel
        # fire lateness: one observation per dispatched job, in this queue's series
        assert total(after, "wheelsched_fire_lateness_seconds_count", queue=queue) == n_run
        assert total(after, "wheelsched_fire_lateness_seconds_bucket", queue=queue, le="+Inf") == n_run
        assert 0 <= total(after, "wheelsched_fire_lateness_seconds_sum", queue=queue) < n_run * 5
        # per-shard gauges: nothing unfinished, nothing leased; logs durable up to their last record
        assert total(after, "wheelsched_shard_pending_jobs") == 0
        assert total(after, "wheelsched_shard_in_flight_leases") == 0
        for shard in range(shards):
            last = total(after, "wheelsched_wal_last_seq", shard=str(shard))
            assert last >= 1
            assert total(after, "wheelsched_wal_durable_seq", shard=str(shard)) <= last
        # gRPC requests by method and code
        assert total(after, "wheelsched_grpc_requests_total",
                     method="/wheelsched.v1.Scheduler/ScheduleJob", code="OK") == n_cancel
        assert total(after, "wheelsched_grpc_requests_total",
                     method="/wheelsched.v1.Scheduler/CancelJob", code="OK") == n_cancel
        assert total(after, "wheelsched_grpc_requests_total",
                     method="/wheelsched.v1.Scheduler/GetJob", code="NOT_FOUND") == 1
        assert total(after, "wheelsched_grpc_requests_total",
                     method="/wheelsched.v1.Scheduler/BatchScheduleJobs", code="OK") >= 1
        assert total(after, "process_resident_memory_bytes") > 0

        assert node.terminate() == 0
        events = [json.loads(line) for line in node.log_text().splitlines() if line.startswith("{")]
        by_event = {e.get("event"): e for e in events}
        for event in ("starting", "recovered", "metrics", "serving", "shutdown_requested", "stopped"):
            assert event in by_event, (event, node.log_tail())
        assert by_event["recovered"]["shards"] == shards
        assert {"records", "seconds", "jobs"} <= set(by_event["recovered"])
        assert by_event["stopped"]["jobs_succeeded"] == n_run
        for e in events:
            assert {"ts", "level", "logger", "msg"} <= set(e)
        # one line per notable event, none per job
        assert len(events) < 15, events


def test_replay_metrics_after_restart(tmp_path: Path) -> None:
    with running_node(tmp_path, fsync="never", shards=2, metrics="127.0.0.1:0") as node:
        with Client(node.target) as client:
            client.schedule_many([{"queue": "r", "id": f"r-{i}", "delay": 3600} for i in range(10)])
        node.restart(graceful=True)
        samples = scrape(metrics_url(node))
        assert total(samples, "wheelsched_replay_jobs") == 10
        assert total(samples, "wheelsched_replay_records") >= 10
        assert total(samples, "wheelsched_shard_pending_jobs") == 10
        assert total(samples, "wheelsched_shard_epoch") == 2 * 2  # two shards, second start
        # text format by default: readable, not JSON
        assert "INFO wheelsched.node: recovered 10 jobs" in node.log_text()
