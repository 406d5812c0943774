"""Shared fixtures. Wheel and log implementations are parametrized so the
same engine tests run against the C wheel and its pure-Python twin, and
against the in-memory log and the real write-ahead log."""

from __future__ import annotations

import pytest

from wheelsched.wheel import IMPLEMENTATION, PyTimingWheel, TimingWheel

WHEELS = [pytest.param(PyTimingWheel, id="pywheel")]
if IMPLEMENTATION == "c":
    WHEELS.insert(0, pytest.param(TimingWheel, id="cwheel"))


@pytest.fixture(params=WHEELS)
def wheel_cls(request):
    return request.param
