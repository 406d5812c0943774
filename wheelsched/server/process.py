"""Run a real ``wheelsched serve`` subprocess (tests, the demo, benchmarks).

    with running_node(tmp_path, fsync="never") as node:
        Client(node.target) ...
        node.kill()      # SIGKILL: a crash
        node.restart()   # same data dir, same port (workers reconnect to it)

The first start listens on port 0 and reads the port from the node's
``listening on HOST:PORT`` line (no race for a "free" port); restarts reuse
that port. The node is always killed in teardown, and its stderr is kept in
``tmp_path/node-N.log`` (the tail is shown when it fails to start).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_LISTENING = re.compile(r"listening on (\S+):(\d+)")
START_TIMEOUT = 60.0


def read_log(path: Path | None) -> str:
    """A server's log so far ("" before it exists)."""
    try:
        return path.read_text(errors="replace") if path is not None else ""
    except FileNotFoundError:
        return ""


def _tail(path: Path | None, lines: int = 40) -> str:
    return "\n".join(read_log(path).splitlines()[-lines:])


def kill_process(proc: subprocess.Popen | None) -> None:
    """SIGKILL (a crash) and reap."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(30)


def terminate_process(proc: subprocess.Popen, timeout: float) -> int:
    """SIGTERM (graceful shutdown), SIGKILL if it does not exit in time;
    returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_process(proc)
    return proc.returncode


def spawn_listening(argv: list[str], log_path: Path, timeout: float = START_TIMEOUT,
                    cwd: Path | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server that prints ``listening on HOST:PORT`` when it serves
    (the node, or a benchmark's baseline server) with its output in
    ``log_path``; wait for that line and return the process and port. A
    server that exits or stays silent too long is killed and reported with
    the tail of its log."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    while True:
        match = _LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return proc, int(match.group(2))
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(argv[1:4])} exited with {proc.returncode} before "
                               f"listening:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(30)
            raise TimeoutError(f"{' '.join(argv[1:4])} not listening after {timeout}s:\n{_tail(log_path)}")
        time.sleep(0.02)


class NodeProcess:
    """One node's data directory and flags, and the process currently serving it."""

    def __init__(self, tmp_path: Path, flags: dict[str, Any], *, data_dir: Path | None = None,
                 name: str = "node") -> None:
        self.tmp_path = Path(tmp_path)
        self.data_dir = Path(data_dir) if data_dir is not None else self.tmp_path / "node-data"
        self.name = name
        self.flags = flags
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path: Path | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        argv = [sys.executable, "-m", "wheelsched", "serve", "--data-dir", str(self.data_dir),
                "--listen", f"127.0.0.1:{self.port}"]  # fmt: skip
        for key, value in self.flags.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value not in (None, False):
                argv += [flag, str(value)]
        return argv

    def start(self, timeout: float = START_TIMEOUT) -> NodeProcess:
        """Start the node and wait until it prints its listening line."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("node already running")
        self.starts += 1
        self.log_path = self.tmp_path / f"{self.name}-{self.starts}.log"
        self.proc, self.port = spawn_listening(self._argv(), self.log_path, timeout)
        return self

    def log_text(self) -> str:
        return read_log(self.log_path)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def kill(self) -> None:
        """SIGKILL (a crash) and reap."""
        kill_process(self.proc)

    def pause(self) -> None:
        """SIGSTOP: the process freezes (threads, timers, sockets and all)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful shutdown); returns the exit code."""
        assert self.proc is not None
        return terminate_process(self.proc, timeout)

    def restart(self, graceful: bool = False) -> NodeProcess:
        """Stop the node (SIGKILL unless ``graceful``) and start it again on
        the same port and data directory."""
        if graceful:
            self.terminate()
        else:
            self.kill()
        return self.start()


@contextlib.contextmanager
def running_node(tmp_path: Path, **flags: Any) -> Iterator[NodeProcess]:
    """A started node; ``flags`` become ``--flag value`` (``True``: bare flag)."""
    node = NodeProcess(tmp_path, flags)
    try:
        node.start()
        yield node
    finally:
        node.kill()
