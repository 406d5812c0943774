"""Shared by the tests of modules with a C implementation and a pure-Python
twin (``x.py`` picks one; ``WHEELSCHED_PURE_PYTHON=1`` forces the twin)."""

from __future__ import annotations

import os
from types import ModuleType

import pytest

PURE = os.environ.get("WHEELSCHED_PURE_PYTHON", "") not in ("", "0")


def check_c_chosen(module: ModuleType, c_module: ModuleType | None, *names: str) -> None:
    """CI must test the C implementation, not the twin twice: ``module``
    chose ``c_module``'s ``names`` (skips when the twin was asked for)."""
    if PURE:
        assert module.IMPLEMENTATION == "python"
        pytest.skip("WHEELSCHED_PURE_PYTHON is set")
    assert c_module is not None, f"the C extension behind {module.__name__} did not import: build it"
    assert module.IMPLEMENTATION == "c"
    for name in names:
        assert getattr(module, name) is getattr(c_module, name), name
