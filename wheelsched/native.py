"""Which build of a hot module runs: its C extension or its pure-Python twin.

Each module with a C core (the wheel, the ticker, the WAL record walk and
framing, the untracked job records) exports the extension's objects when it
imports and ``WHEELSCHED_PURE_PYTHON`` is unset (or "" or "0"), otherwise its
pure-Python twin — the way msgpack-python and yarl pick theirs. This is the
one place that reads the variable and tries the import.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def pure_python_forced() -> bool:
    """True when ``WHEELSCHED_PURE_PYTHON`` asks for the pure-Python twins."""
    return os.environ.get("WHEELSCHED_PURE_PYTHON", "") not in ("", "0")


def extension(name: str) -> ModuleType | None:
    """The C extension module ``name`` (absolute), or None when the twins
    are forced or the extension is not built."""
    if pure_python_forced():
        return None
    try:
        return importlib.import_module(name)
    except ImportError:  # not built: the twin runs
        return None
