"""Rate limits on write RPCs: a token bucket per client.

``rate_limit_jobs_per_s`` (0 = off, the default: the interceptor is not
installed and costs nothing) refills each client's bucket; it holds at most
``rate_limit_burst`` tokens (0 = one second's worth). A call costs one token
per job it writes: ScheduleJob, CancelJob and RequeueJob cost 1,
BatchScheduleJobs costs its number of jobs. A call that finds too few tokens
fails with ``RESOURCE_EXHAUSTED`` before the servicer runs, so a refused
call changes nothing (and takes no tokens).

A client is its bearer token when auth is on (every connection of one
token shares a bucket), else its peer's address without the port. Reads,
the Worker service, health and reflection are not limited.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

import grpc

from wheelsched.server.metrics import wrap_behavior

# method -> what a call costs (jobs written)
WRITE_COSTS: dict[str, Callable[[Any], int]] = {
    "/wheelsched.v1.Scheduler/ScheduleJob": lambda request: 1,
    "/wheelsched.v1.Scheduler/BatchScheduleJobs": lambda request: max(1, len(request.jobs)),
    "/wheelsched.v1.Scheduler/CancelJob": lambda request: 1,
    "/wheelsched.v1.Scheduler/RequeueJob": lambda request: 1,
}
MAX_CLIENTS = 10_000  # buckets kept; past this, full (idle) buckets are dropped


class RateLimiter:
    """Token buckets by client key (event-loop thread only: no lock)."""

    def __init__(self, rate: float, burst: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst > 0 else max(1, math.ceil(rate))
        self.clock = clock
        self.buckets: dict[str, list[float]] = {}  # key -> [tokens, time of last update]

    def take(self, key: str, cost: int) -> bool:
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= MAX_CLIENTS:
                self._evict(now)
            bucket = self.buckets[key] = [float(self.burst), now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < cost:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - cost
        return True

    def _evict(self, now: float) -> None:
        full = [k for k, (tokens, at) in self.buckets.items()
                if tokens + (now - at) * self.rate >= self.burst]
        for k in full:
            del self.buckets[k]
        if len(self.buckets) >= MAX_CLIENTS:  # all busy: start over rather than grow
            self.buckets.clear()


def _peer_host(peer: str) -> str:
    """``ipv4:1.2.3.4:5678`` -> ``ipv4:1.2.3.4`` (``ipv6:[::1]:5678`` -> ``ipv6:[::1]``)."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rpartition(":")[0]
    return peer


def _token_key(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token:
                return "token:" + hashlib.sha256(token.strip().encode("utf-8")).hexdigest()[:16]
    return None


class RateLimitInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, limiter: RateLimiter, by_token: bool) -> None:
        self.limiter = limiter
        self.by_token = by_token

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        cost_of = WRITE_COSTS.get(handler_call_details.method)
        if handler is None or cost_of is None:
            return handler
        token_key = _token_key(handler_call_details.invocation_metadata) if self.by_token else None
        limiter = self.limiter

        def wrap(behavior, is_gen):
            async def call(request, context):
                key = token_key or "peer:" + _peer_host(context.peer() or "")
                cost = cost_of(request)
                if not limiter.take(key, cost):
                    if cost > limiter.burst:
                        message = (f"rate limit: a call writing {cost} jobs exceeds the burst of "
                                   f"{limiter.burst} jobs per client; send smaller batches")
                    else:
                        message = (f"rate limit: at most {limiter.rate:g} jobs/s per client (burst "
                                   f"{limiter.burst}); retry later")
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
                return await behavior(request, context)
            return call

        return wrap_behavior(handler, wrap)
