"""Shared fixtures. Wheel and log implementations are parametrized so the
same engine tests run against the C wheel and its pure-Python twin, and
against the in-memory log and the real write-ahead log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from wheelsched.client import Client
from wheelsched.server.process import NodeProcess, running_node
from wheelsched.wheel import IMPLEMENTATION, PyTimingWheel, TimingWheel

WHEELS = [pytest.param(PyTimingWheel, id="pywheel")]
if IMPLEMENTATION == "c":
    WHEELS.insert(0, pytest.param(TimingWheel, id="cwheel"))


@pytest.fixture(params=WHEELS)
def wheel_cls(request):
    return request.param


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One real node per test module that asks for it (modules that need
    other flags define their own ``node``)."""
    with running_node(tmp_path_factory.mktemp("node"), fsync="never", shards=4) as n:
        yield n


@pytest.fixture
def client(node: NodeProcess) -> Iterator[Client]:
    with Client(node.target, timeout=10) as c:
        yield c
