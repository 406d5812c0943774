"""The grpc channel both the Client and the Worker dial.

One place for channel options so both reconnect to a restarted node quickly:
grpc's default reconnect backoff grows to two minutes, which would leave a
worker idle long after its node came back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc

# Idempotent calls are retried by grpc itself on UNAVAILABLE (node restarting,
# connection refused). ScheduleJob is idempotent only with a client-chosen id,
# and RequeueJob is not idempotent, so neither is retried here.
_RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "wheelsched.v1.Scheduler", "method": "GetJob"},
                    {"service": "wheelsched.v1.Scheduler", "method": "ListJobs"},
                    {"service": "wheelsched.v1.Scheduler", "method": "CancelJob"},
                    {"service": "wheelsched.v1.Node"},
                ],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)

DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.service_config", _RETRY_SERVICE_CONFIG),
    ("grpc.enable_retries", 1),
)


def open_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to ``target`` (insecure unless credentials are given).
    ``options`` override the defaults by name."""
    merged = dict(DEFAULT_OPTIONS)
    merged.update(dict(options))
    opts = list(merged.items())
    if credentials is None:
        return grpc.insecure_channel(target, options=opts)
    return grpc.secure_channel(target, credentials, options=opts)
