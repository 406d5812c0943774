"""Python SDK of wheelsched: a ``Client`` to schedule and inspect jobs, and a
``Worker`` that receives due jobs on a stream, runs a handler and acks.

    from wheelsched.client import Client, Worker

    with Client("127.0.0.1:7070") as c:
        c.schedule("emails", b"hello", delay=90)

Errors are the ``wheelsched.errors`` classes (``InvalidArgument``,
``NotFound``, ``AlreadyExists``, ...), mapped from gRPC status codes by
``wheelsched.status``, so code catches the same exceptions in-process and
over the network.
"""

from __future__ import annotations

from wheelsched.client._convert import (
    Delivery,
    Job,
    JobSpec,
    NodeStatus,
    ShardAssignment,
    ShardMap,
    ShardStatus,
    job_from_proto,
)
from wheelsched.client.client import Client
from wheelsched.client.cluster_worker import ClusterWorker
from wheelsched.client.worker import PermanentFailure, Worker

__all__ = [
    "Client",
    "ClusterWorker",
    "Delivery",
    "Job",
    "JobSpec",
    "NodeStatus",
    "PermanentFailure",
    "ShardAssignment",
    "ShardMap",
    "ShardStatus",
    "Worker",
    "job_from_proto",
]
