"""Issue #7: WAL statistics (fsync latency, group commit, snapshots), their
metrics, and the aggregated slow-fsync and snapshot log lines."""

from __future__ import annotations

import json
import time
from pathlib import Path

from node_helpers import running_node
from test_ops_metrics import metrics_url, scrape, total, wait_until

from wheelsched.client import Client
from wheelsched.wal import WALOptions, WriteAheadLog
from wheelsched.wal.log import BATCH_BUCKETS, FSYNC_BUCKETS


def test_wal_stats_count_batches_fsyncs_and_snapshots(tmp_path: Path) -> None:
    opts = WALOptions(fsync="always", slow_fsync_seconds=0.0)  # every fsync counts as slow
    with WriteAheadLog(tmp_path / "log", opts, meta={"shard": 0}) as wal:
        st = wal.stats()
        assert st["records_written"] == st["fsyncs"] == st["snapshots"] == 0
        for i in range(10):
            wal.wait_durable_sync(wal.append({"i": i, "pad": "x" * 100}))
        seq = wal.append_many([{"i": i} for i in range(500)])
        wal.wait_durable_sync(seq)
        st = wal.stats()
        assert st["records_written"] == 510
        assert st["bytes_written"] > 510 * 16
        assert 2 <= st["batches"] <= 510
        assert sum(st["batch_buckets"]) == st["batches"]
        assert len(st["batch_buckets"]) == len(BATCH_BUCKETS) + 1
        assert st["batch_max"] >= 1
        assert st["fsyncs"] >= 2
        assert sum(st["fsync_buckets"]) == st["fsyncs"]
        assert len(st["fsync_buckets"]) == len(FSYNC_BUCKETS) + 1
        assert 0 < st["fsync_max_seconds"] <= st["fsync_seconds"]
        assert st["slow_fsyncs"] == st["fsyncs"]
        assert [n for n, _ in wal.slow_fsyncs][-1] == st["slow_fsyncs"]

        assert wal.snapshot(iter([{"job": i} for i in range(7)]))
        assert wal.wait_snapshot(30)
        st = wal.stats()
        assert st["snapshots"] == 1
        assert st["snapshot_records"] == st["last_snapshot_records"] == 7
        assert 0 < st["last_snapshot_seconds"] == st["snapshot_seconds"]


def test_wal_stats_default_threshold_counts_no_fast_fsync(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path / "log", WALOptions(fsync="never"), meta=None) as wal:
        wal.wait_durable_sync(wal.append_many(range(100)))
        st = wal.stats()
        assert st["records_written"] == 100
        assert st["fsyncs"] == 0 and st["slow_fsyncs"] == 0
        assert st["slow_fsync_threshold_seconds"] == 0.1


def test_node_wal_metrics_and_event_lines(tmp_path: Path) -> None:
    interval = 0.2
    with running_node(tmp_path, fsync="always", shards=2, metrics="127.0.0.1:0", log_format="json",
                      slow_fsync_ms="0", event_log_seconds=interval, snapshot_every=20) as node:
        url = metrics_url(node)
        started = time.monotonic()
        with Client(node.target) as client:
            for lo in range(0, 60, 10):
                client.schedule_many([{"queue": "w", "id": f"w-{i}", "delay": 3600}
                                      for i in range(lo, lo + 10)])
        assert wait_until(lambda: total(scrape(url), "wheelsched_wal_snapshots_total") >= 2)
        samples = scrape(url)
        assert total(samples, "wheelsched_wal_records_written_total") >= 60
        assert total(samples, "wheelsched_wal_bytes_written_total") > 60 * 16
        fsyncs = total(samples, "wheelsched_wal_fsync_seconds_count")
        assert fsyncs >= 6  # fsync always: at least one per write RPC
        assert total(samples, "wheelsched_wal_fsync_seconds_bucket", le="+Inf") == fsyncs
        assert total(samples, "wheelsched_wal_fsync_seconds_sum") > 0
        assert total(samples, "wheelsched_wal_slow_fsyncs_total") == fsyncs  # threshold 0
        assert total(samples, "wheelsched_wal_batch_records_count") >= 6
        assert total(samples, "wheelsched_wal_batch_records_sum") == \
            total(samples, "wheelsched_wal_records_written_total")
        assert total(samples, "wheelsched_wal_snapshot_records_total") > 0
        assert total(samples, "wheelsched_wal_fsync_max_seconds", shard="0") > 0

        def events(kind: str) -> list[dict]:
            lines = [json.loads(line) for line in node.log_text().splitlines() if line.startswith("{")]
            return [e for e in lines if e.get("event") == kind]

        assert wait_until(lambda: events("snapshot") and events("slow_fsync"))
        time.sleep(3 * interval)
        elapsed = time.monotonic() - started
        slow = events("slow_fsync")
        # aggregated: at most one line per interval, not one per fsync
        assert len(slow) <= elapsed / interval + 2
        assert sum(e["count"] for e in slow) >= fsyncs
        assert len(slow) < sum(e["count"] for e in slow)
        assert slow[0]["msg"].startswith("fsync slower than 0 ms: ")
        assert "max" in slow[0]["msg"] and slow[0]["max_seconds"] > 0
        snap = events("snapshot")[0]
        assert snap["msg"].startswith(f"snapshot of shard {snap['shard']}: {snap['records']} records in ")
        assert snap["records"] > 0
