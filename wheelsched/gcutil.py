"""``untrack(obj)``: the C helper when built, else a no-op (the pure-Python
build keeps working, only with more garbage-collector work)."""

from __future__ import annotations

import os

if os.environ.get("WHEELSCHED_PURE_PYTHON", "") not in ("", "0"):
    def untrack(obj):
        return obj
    IMPLEMENTATION = "python"
else:
    try:
        from wheelsched._gc_c import untrack
    except ImportError:
        def untrack(obj):
            return obj
        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "c"

__all__ = ["IMPLEMENTATION", "untrack"]
