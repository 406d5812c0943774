"""The grpc channel both the Client and the Worker dial.

One place for channel options so both reconnect to a restarted node quickly:
grpc's default reconnect backoff grows to two minutes, which would leave a
worker idle long after its node came back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

# Idempotent calls are retried by grpc itself on UNAVAILABLE (node restarting,
# connection refused), for a few seconds. Scheduling is idempotent by job id
# and the Client always sends one (it generates missing ids), so it is
# retried too; RequeueJob is not idempotent and is not retried.
_RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "wheelsched.v1.Scheduler", "method": "ScheduleJob"},
                    {"service": "wheelsched.v1.Scheduler", "method": "BatchScheduleJobs"},
                    {"service": "wheelsched.v1.Scheduler", "method": "GetJob"},
                    {"service": "wheelsched.v1.Scheduler", "method": "ListJobs"},
                    {"service": "wheelsched.v1.Scheduler", "method": "CancelJob"},
                    {"service": "wheelsched.v1.Node"},
                ],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
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
    # grpc shares subchannels between channels to the same address by
    # default, and with them their reconnect backoff: a fresh Client would
    # fail fast on a restarted node because a Worker's connection was still
    # backing off. Each channel gets its own.
    ("grpc.use_local_subchannel_pool", 1),
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


def _pem(value: str | bytes | Path | None) -> bytes | None:
    if value is None or value == "":
        return None
    if isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def security(
    credentials: grpc.ChannelCredentials | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    *,
    tls_ca: str | bytes | Path | None = None,
    tls_cert: str | bytes | Path | None = None,
    tls_key: str | bytes | Path | None = None,
    token: str | None = None,
) -> tuple[grpc.ChannelCredentials | None, tuple[tuple[str, str], ...]]:
    """Channel credentials and call metadata from the SDK's TLS/token options.

    ``tls_ca`` (a PEM file or its bytes) turns TLS on and is the CA that
    signed the node's certificate; ``tls_cert``/``tls_key`` are this client's
    certificate for a node that requires client certificates (mTLS);
    ``token`` is sent as ``authorization: Bearer TOKEN`` on every call.
    Explicit ``credentials`` win over the ``tls_*`` options."""
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("tls_cert and tls_key go together")
    if credentials is None and (tls_ca or tls_cert):
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_pem(tls_ca), private_key=_pem(tls_key), certificate_chain=_pem(tls_cert))
    md = tuple(metadata)
    if token:
        md = (*(kv for kv in md if kv[0] != "authorization"), ("authorization", f"Bearer {token}"))
    return credentials, md
