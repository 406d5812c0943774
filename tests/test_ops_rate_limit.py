"""Issue #7: per-client rate limits on write RPCs (token bucket, RESOURCE_EXHAUSTED)."""

from __future__ import annotations

from pathlib import Path

import pytest
from node_helpers import running_node
from test_ops_metrics import metrics_url, scrape, total

from wheelsched import errors
from wheelsched.client import Client
from wheelsched.server.ratelimit import RateLimiter

TOKEN_A = "rate-token-a-0123456789abcdef"
TOKEN_B = "rate-token-b-0123456789abcdef"


def test_token_bucket_refills_and_caps() -> None:
    now = [100.0]
    lim = RateLimiter(2.0, 4, clock=lambda: now[0])
    assert [lim.take("a", 1) for _ in range(5)] == [True] * 4 + [False]
    assert lim.take("b", 4)  # buckets are per client
    assert not lim.take("a", 1)
    now[0] += 1.0  # +2 tokens
    assert lim.take("a", 2) and not lim.take("a", 1)
    now[0] += 100.0  # refills up to the burst, not beyond
    assert lim.take("a", 4) and not lim.take("a", 1)
    assert not lim.take("c", 5)  # more than the burst is never admitted
    assert RateLimiter(10.0).burst == 10  # burst 0: one second's worth


def test_rate_limit_refuses_a_burst_and_changes_nothing(tmp_path: Path) -> None:
    # 0.1 jobs/s: no token comes back during the test
    with running_node(tmp_path, fsync="never", shards=2, metrics="127.0.0.1:0",
                      rate_limit_jobs_per_s="0.1", rate_limit_burst=4) as node:
        url = metrics_url(node)
        with Client(node.target) as client:
            client.schedule(queue="rl", id="rl-0", delay=3600)
            client.schedule(queue="rl", id="rl-1", delay=3600)
            client.schedule_many([{"queue": "rl", "id": f"rl-{i}", "delay": 3600} for i in (2, 3)])
            before_jobs = sorted((j.id, j.state) for j in client.list(queue="rl"))
            before = scrape(url)
            refused = 0
            for i in range(4, 10):
                with pytest.raises(errors.ResourceExhausted, match=r"rate limit: at most 0.1 jobs/s"):
                    client.schedule(queue="rl", id=f"rl-{i}", delay=3600)
                refused += 1
            with pytest.raises(errors.ResourceExhausted, match="exceeds the burst of 4 jobs"):
                client.schedule_many([{"queue": "rl", "id": f"rl-b{i}", "delay": 3600} for i in range(5)])
            with pytest.raises(errors.ResourceExhausted, match="rate limit"):
                client.cancel("rl-0")
            with pytest.raises(errors.ResourceExhausted, match="rate limit"):
                client.requeue("rl-0")
            # reads are not limited, and nothing changed
            for i in range(4, 10):
                with pytest.raises(errors.NotFound):
                    client.get(f"rl-{i}")
            assert sorted((j.id, j.state) for j in client.list(queue="rl")) == before_jobs
            assert client.get("rl-0").state == "SCHEDULED"
            after = scrape(url)
        for name in ("wheelsched_wal_last_seq", "wheelsched_jobs_scheduled_total",
                     "wheelsched_jobs_cancelled_total"):
            assert total(after, name) == total(before, name), name
        assert total(after, "wheelsched_grpc_requests_total", method="/wheelsched.v1.Scheduler/ScheduleJob",
                     code="RESOURCE_EXHAUSTED") == refused


def test_rate_limit_per_token_when_auth_is_on(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN_A} admin\n{TOKEN_B} admin\n")
    with running_node(tmp_path, fsync="never", shards=2, tokens_file=tokens,
                      rate_limit_jobs_per_s="0.1", rate_limit_burst=2) as node:
        with Client(node.target, token=TOKEN_A) as a, Client(node.target, token=TOKEN_B) as b:
            a.schedule(queue="t", id="a-0", delay=3600)
            a.schedule(queue="t", id="a-1", delay=3600)
            with pytest.raises(errors.ResourceExhausted):
                a.schedule(queue="t", id="a-2", delay=3600)
            # same peer address, another token: its own bucket
            b.schedule(queue="t", id="b-0", delay=3600)
            b.schedule(queue="t", id="b-1", delay=3600)
            with pytest.raises(errors.ResourceExhausted):
                b.schedule(queue="t", id="b-2", delay=3600)
        # an unauthenticated call is refused by auth and takes no tokens
        with Client(node.target) as anon, pytest.raises(errors.WheelschedError) as exc:
            anon.schedule(queue="t", id="x", delay=3600)
        assert not isinstance(exc.value, errors.ResourceExhausted)


def test_rate_limit_off_by_default(tmp_path: Path) -> None:
    with running_node(tmp_path, fsync="never", shards=2) as node, Client(node.target) as client:
        for i in range(50):
            client.schedule(queue="free", id=f"free-{i}", delay=3600)
