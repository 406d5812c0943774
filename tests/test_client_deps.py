"""Job dependencies end to end: the Client, a Worker and the CLI against a
real node (``wheelsched serve`` in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid

import pytest
from node_helpers import REPO, NodeProcess, wait_until

from wheelsched import errors
from wheelsched.client import Client, PermanentFailure, Worker


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:8]




def cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WHEELSCHED_TARGET": node.target}
    return subprocess.run([sys.executable, "-m", "wheelsched", "jobs", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_graph_in_one_batch_runs_in_dependency_order(node: NodeProcess, client: Client, tag: str) -> None:
    q = f"dag-{tag}"
    ids = {name: f"{tag}-{name}" for name in ("extract", "clean", "enrich", "load")}
    specs = [
        {"queue": q, "id": ids["load"], "delay": 0, "after": [ids["clean"], ids["enrich"]]},
        {"queue": q, "id": ids["clean"], "delay": 0, "after": [ids["extract"]]},
        {"queue": q, "id": ids["enrich"], "delay": 0, "after": [ids["extract"]]},
        {"queue": q, "id": ids["extract"], "delay": 0.3},
    ]
    jobs = client.schedule_many(specs, view="basic")
    assert [j.state for j in jobs] == ["WAITING", "WAITING", "WAITING", "SCHEDULED"]
    load = client.get(ids["load"], full=True)
    assert load.after == (ids["clean"], ids["enrich"]) and load.on_dependency_failure == "cancel"
    assert sorted(load.open_dependencies) == sorted([ids["clean"], ids["enrich"]])
    assert sorted(client.get(ids["extract"], full=True).dependents) == sorted([ids["clean"], ids["enrich"]])
    assert client.get(ids["extract"]).dependents == ()  # BASIC: no dependents

    done: list[str] = []
    lock = threading.Lock()

    def handle(d) -> None:
        with lock:
            done.append(d.job_id)

    worker = Worker(node.target, [q], handle, concurrency=4)
    worker.start()
    try:
        assert wait_until(lambda: client.get(ids["load"]).state == "SUCCEEDED")
    finally:
        worker.stop(timeout=10)
    assert done[0] == ids["extract"] and done[-1] == ids["load"] and len(done) == 4


def test_failure_cancels_down_the_graph_or_runs_anyway(node: NodeProcess, client: Client, tag: str) -> None:
    q = f"fail-{tag}"
    a, b, c, d = (f"{tag}-{x}" for x in "abcd")
    client.schedule_many([
        {"queue": q, "id": a, "delay": 0, "max_attempts": 1},
        {"queue": q, "id": b, "delay": 0, "after": [a]},
        {"queue": q, "id": c, "delay": 0, "after": [b]},
        {"queue": q, "id": d, "delay": 0, "after": [a], "on_dependency_failure": "run_anyway"},
    ])

    def handle(delivery) -> None:
        if delivery.job_id == a:
            raise PermanentFailure("no input")

    worker = Worker(node.target, [q], handle, concurrency=2)
    worker.start()
    try:
        assert wait_until(lambda: client.get(d).state == "SUCCEEDED")
    finally:
        worker.stop(timeout=10)
    assert client.get(a).state == "DEAD"
    job_b, job_c = client.get(b), client.get(c)
    assert job_b.state == job_c.state == "CANCELLED"
    assert job_b.last_error.startswith(f"dependency {a!r} ended DEAD")
    assert job_c.last_error.startswith(f"dependency {b!r} ended CANCELLED")


def test_bad_graphs_are_invalid_argument_and_change_nothing(client: Client, tag: str) -> None:
    q = f"bad-{tag}"
    x, y = f"{tag}-x", f"{tag}-y"
    with pytest.raises(errors.InvalidArgument) as exc:
        client.schedule_many([{"queue": q, "id": x, "delay": 60, "after": [y]},
                              {"queue": q, "id": y, "delay": 60, "after": [x]}])
    assert exc.value.field == "jobs[0].after" and "cycle" in exc.value.message
    with pytest.raises(errors.InvalidArgument) as exc:
        client.schedule(q, id=x, delay=60, after=["nobody-" + tag])
    assert exc.value.field == "job.after[0]" and "unknown job" in exc.value.message
    with pytest.raises(errors.InvalidArgument):
        client.schedule(q, id=x, delay=60, after=[x])
    for job_id in (x, y):
        with pytest.raises(errors.NotFound):
            client.get(job_id)
    with pytest.raises(errors.InvalidArgument):  # caught before any RPC
        client.schedule(q, id=x, delay=60, on_dependency_failure="ignore")


def test_cli_schedule_after_and_get_deps(node: NodeProcess, client: Client, tag: str) -> None:
    q = f"cli-{tag}"
    first, second = f"{tag}-first", f"{tag}-second"
    r = cli(node, "schedule", "--queue", q, "--id", first, "--delay", "3600")
    assert r.returncode == 0, r.stderr
    r = cli(node, "schedule", "--queue", q, "--id", second, "--delay", "0", "--after", first,
            "--on-dependency-failure", "run_anyway")
    assert r.returncode == 0, r.stderr
    assert "state:" in r.stdout and "WAITING" in r.stdout and "after:" in r.stdout
    r = cli(node, "get", second, "--deps")
    assert r.returncode == 0, r.stderr
    assert "dependencies (1, 1 open):" in r.stdout and f"  {first}  (open)" in r.stdout
    r = cli(node, "get", first, "--deps")
    assert f"dependents still waiting (1):\n  {second}\n" in r.stdout
    r = cli(node, "get", second, "--json")
    data = json.loads(r.stdout)
    assert data["after"] == [first] and data["open_dependencies"] == [first]
    assert data["on_dependency_failure"] == "run_anyway"
    r = cli(node, "list", "--queue", q, "--state", "WAITING")
    assert second in r.stdout and first not in r.stdout
    r = cli(node, "schedule", "--queue", q, "--id", f"{tag}-third", "--delay", "0", "--after", "missing")
    assert r.returncode == 2 and "INVALID_ARGUMENT" in r.stderr and "unknown job 'missing'" in r.stderr
    cli(node, "cancel", first)
    assert client.get(second).state == "SCHEDULED"  # run_anyway
