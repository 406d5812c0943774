"""Start a throw-away single-member etcd on free loopback ports.

For tests, the failover benchmark and trying a cluster on one machine:
``etcd`` (Debian's ``etcd-server``; ``scripts/ensure_etcd.sh`` installs it)
runs in a directory of the caller's with its own data dir, and ``stop`` /
``start`` restart it on the same ports and data (an etcd outage).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from wheelsched.cluster.etcd import Etcd, EtcdUnavailable
from wheelsched.server.process import kill_process, read_log, terminate_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def etcd_binary() -> str | None:
    return shutil.which("etcd") or next(
        (p for p in ("/usr/bin/etcd", "/usr/local/bin/etcd") if Path(p).exists()), None)


class LocalEtcd:
    def __init__(self, workdir: Path) -> None:
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd not found: install Debian's etcd-server (scripts/ensure_etcd.sh)")
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"etcd-{self.starts}.log"

    def start(self, timeout: float = 30.0) -> LocalEtcd:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.starts += 1
        argv = [self.binary, "--name", "wheelsched-test", "--data-dir", str(self.workdir / "data"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"wheelsched-test={peer}",
                "--listen-metrics-urls", "",
                # fsync per write: a restart test must not lose what etcd acknowledged
                "--unsafe-no-fsync=false"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        probe = Etcd([("127.0.0.1", self.client_port)], timeout=1.0)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"etcd exited with {self.proc.returncode}:\n"
                                       f"{read_log(self.log_path)[-3000:]}")
                try:
                    probe.list("/")
                    return self
                except EtcdUnavailable:
                    if time.monotonic() > deadline:
                        kill_process(self.proc)
                        raise TimeoutError(f"etcd not ready after {timeout}s:\n"
                                           f"{read_log(self.log_path)[-3000:]}") from None
                    time.sleep(0.05)
        finally:
            probe.close()

    def stop(self) -> None:
        if self.proc is not None:
            terminate_process(self.proc, 10)
            self.proc = None

    def kill(self) -> None:
        kill_process(self.proc)
        self.proc = None

    def client(self, timeout: float = 2.0) -> Etcd:
        return Etcd([("127.0.0.1", self.client_port)], timeout=timeout)

    def __enter__(self) -> LocalEtcd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
