"""Graceful shutdown of a real node on SIGTERM: health turns NOT_SERVING,
new writes are refused, a worker can still ack what it holds during the
drain, the process exits 0 with its logs flushed, and a restart finds
everything."""

from __future__ import annotations

import queue
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from node_helpers import running_node

from wheelsched.client import Client
from wheelsched.v1 import worker_pb2, worker_pb2_grpc


def test_sigterm_drains_and_restarts_clean(tmp_path):
    with running_node(tmp_path, fsync="interval:200", shards=2, drain_seconds=3) as node:
        client = Client(node.target, timeout=5)
        client.schedule_many([{"queue": "later", "id": f"later-{i}", "delay": 3600} for i in range(200)])
        client.schedule(queue="now", id="held", delay=0)

        channel = grpc.insecure_channel(node.target)
        health = health_pb2_grpc.HealthStub(channel)
        requests: queue.Queue = queue.Queue()
        requests.put(worker_pb2.StreamJobsRequest(queues=["now"], max_in_flight=1))

        def gen():
            while (item := requests.get()) is not None:
                yield item

        responses = worker_pb2_grpc.WorkerStub(channel).StreamJobs(gen())
        d = next(responses).dispatches[0]
        assert d.job_id == "held"

        waiter = threading.Thread(target=node.terminate, kwargs={"timeout": 30})
        waiter.start()
        deadline = time.time() + 5
        status = None
        while time.time() < deadline:
            status = health.Check(health_pb2.HealthCheckRequest(service="")).status
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            time.sleep(0.02)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        # The worker still holds its job during the drain, and its ack counts.
        requests.put(worker_pb2.StreamJobsRequest(acks=[worker_pb2.AckItem(
            job_id=d.job_id, attempt=d.attempt, epoch=d.epoch, success=True)]))
        ack = next(responses).ack_results[0]
        assert ack.code == 0, ack.message
        requests.put(None)
        waiter.join(30)
        assert node.proc.returncode == 0, node.log_tail()
        assert "stopped" in node.log_text()
        channel.close()

        node.start()
        client2 = Client(node.target, timeout=5)
        assert client2.get("held").state == "SUCCEEDED"
        assert sum(1 for _ in client2.list(queue="later")) == 200
        client.close()
        client2.close()
