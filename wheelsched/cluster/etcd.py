"""The little of etcd's v3 API that cluster mode uses, behind one error type.

Wraps ``pyetcd`` (the maintained ``etcd3`` fork): every call has a deadline,
and whatever goes wrong on the way to etcd (connection refused, deadline,
no leader) becomes ``EtcdUnavailable``, so the member's loop has one thing
to catch. Calls are blocking; the member runs them on its own thread.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import pyetcd

from wheelsched.errors import InvalidArgument, Unavailable

# After a failed call, pyetcd skips an endpoint for ``time_retry`` seconds
# (300 by default). With one endpoint that would mean five minutes without
# etcd after a blip; retry it on the next call instead.
ENDPOINT_RETRY_SECONDS = 0.2


class EtcdUnavailable(Unavailable):
    """etcd could not be reached or did not answer in time."""


class KeyValue(NamedTuple):
    key: str
    value: dict[str, Any]
    create_revision: int
    lease: int


def parse_endpoints(text: str) -> list[tuple[str, int]]:
    """``HOST:PORT[,HOST:PORT...]`` (an ``http://`` prefix is allowed)."""
    out = []
    for part in text.split(","):
        part = part.strip().removeprefix("http://")
        host, sep, port = part.rpartition(":")
        if not part or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument("etcd", f"{part!r} is not HOST:PORT")
        out.append((host, int(port)))
    return out


class Etcd:
    def __init__(self, endpoints: Sequence[tuple[str, int]], timeout: float) -> None:
        eps = [pyetcd.Endpoint(host, port, secure=False, time_retry=ENDPOINT_RETRY_SECONDS)
               for host, port in endpoints]
        self._client = pyetcd.MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout, failover=True)
        self._tx = self._client.transactions

    def close(self) -> None:
        self._client.close()

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # pyetcd raises its own classes and grpc's
            raise EtcdUnavailable(f"etcd: {type(exc).__name__}: {exc}") from None

    def grant(self, ttl_seconds: int) -> int:
        return self._call(self._client.lease, ttl_seconds).id

    def keepalive(self, lease: int) -> int:
        """Refresh a lease; returns its TTL, 0 if it no longer exists."""
        def once() -> int:
            for response in self._client.refresh_lease(lease):
                return int(response.TTL)
            return 0
        return self._call(once)

    def revoke(self, lease: int) -> None:
        self._call(self._client.revoke_lease, lease)

    def put(self, key: str, value: dict[str, Any], lease: int) -> None:
        self._call(self._client.put, key, json.dumps(value), lease)

    def claim(self, key: str, value: dict[str, Any], lease: int) -> int:
        """Create ``key`` under ``lease`` if it does not exist. Returns its
        create_revision (the fencing epoch), or 0 if someone holds it."""
        tx = self._tx
        ok, responses = self._call(
            self._client.transaction,
            compare=[tx.create(key) == 0],
            success=[tx.put(key, json.dumps(value), lease), tx.get(key)],
            failure=[])
        if not ok:
            return 0
        _, meta = responses[1][0]
        return int(meta.create_revision)

    def delete_if_created_at(self, key: str, create_revision: int) -> bool:
        """Delete ``key`` only if it is still the incarnation we created."""
        tx = self._tx
        ok, _ = self._call(self._client.transaction,
                           compare=[tx.create(key) == create_revision],
                           success=[tx.delete(key)], failure=[])
        return bool(ok)

    def list(self, prefix: str) -> list[KeyValue]:
        out = []
        for raw, meta in self._call(lambda: list(self._client.get_prefix(prefix))):
            try:
                value = json.loads(raw)
            except ValueError:
                value = {}
            out.append(KeyValue(meta.key.decode(), value if isinstance(value, dict) else {},
                                int(meta.create_revision), int(meta.lease_id)))
        return out
