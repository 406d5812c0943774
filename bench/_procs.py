"""Server subprocesses for the benchmarks: a real ``wheelsched serve`` node
and the gRPC echo baseline, each started on port 0 and found by the
``listening on HOST:PORT`` line it prints (the same protocol as
tests/node_helpers.py). Output goes to a log file whose tail is shown if the
server fails to start.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from wheelsched.server.process import kill_process, read_log, spawn_listening, terminate_process

REPO = Path(__file__).resolve().parent.parent


class ServerProcess:
    def __init__(self, argv: list[str], log_path: Path, timeout: float = 60.0) -> None:
        self.log_path = log_path
        self.proc, self.port = spawn_listening(argv, log_path, timeout, cwd=REPO)
        self.pid = self.proc.pid
        self.target = f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return read_log(self.log_path)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        terminate_process(self.proc, timeout)

    def kill(self) -> None:
        kill_process(self.proc)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_node(root: Path, name: str = "node", **flags: Any) -> ServerProcess:
    """``wheelsched serve`` on a fresh data dir under ``root``; ``flags``
    become ``--flag value``."""
    argv = [sys.executable, "-m", "wheelsched", "serve", "--data-dir", str(root / f"{name}-data"),
            "--listen", "127.0.0.1:0", "--log-level", "WARNING"]
    for key, value in flags.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    return ServerProcess(argv, root / f"{name}.log")


def start_echo(root: Path) -> ServerProcess:
    return ServerProcess([sys.executable, "-m", "bench.echo", "--listen", "127.0.0.1:0"], root / "echo.log")
