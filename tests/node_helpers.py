"""End-to-end tests run real nodes through the package's own launcher."""

from pathlib import Path

from wheelsched.server.process import NodeProcess, running_node

REPO = Path(__file__).resolve().parent.parent

__all__ = ["REPO", "NodeProcess", "running_node"]
