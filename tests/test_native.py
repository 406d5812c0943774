"""wheelsched.native: the one switch between a C extension and its twin."""

from __future__ import annotations

import pytest

from wheelsched import native


@pytest.mark.parametrize("value", ["", "0"])
def test_the_extension_is_used_unless_forced(monkeypatch, value):
    monkeypatch.setenv("WHEELSCHED_PURE_PYTHON", value)
    assert not native.pure_python_forced()
    module = native.extension("wheelsched._gc_c")
    assert module is not None and module.__name__ == "wheelsched._gc_c"


def test_forcing_the_twins_returns_none(monkeypatch):
    monkeypatch.setenv("WHEELSCHED_PURE_PYTHON", "1")
    assert native.pure_python_forced()
    assert native.extension("wheelsched._gc_c") is None


def test_an_extension_that_is_not_built_returns_none(monkeypatch):
    monkeypatch.delenv("WHEELSCHED_PURE_PYTHON", raising=False)
    assert native.extension("wheelsched._no_such_extension") is None
