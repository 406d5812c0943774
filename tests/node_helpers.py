"""End-to-end tests run real nodes through the package's own launcher."""

import time
from collections.abc import Callable
from pathlib import Path

from wheelsched.server.process import NodeProcess, running_node

REPO = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll ``predicate`` every 20 ms until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


__all__ = ["REPO", "NodeProcess", "running_node", "wait_until"]
