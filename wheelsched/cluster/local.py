"""A throw-away cluster on one machine: a single-member etcd on free
loopback ports, and ``wheelsched serve`` processes sharing one data root.

For tests, the failover benchmark and trying a cluster out: ``etcd``
(Debian's ``etcd-server``; ``scripts/ensure_etcd.sh`` installs it) runs in a
directory of the caller's with its own data dir, and ``stop`` / ``start``
restart it on the same ports and data (an etcd outage).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from wheelsched.client import Client
from wheelsched.cluster.etcd import Etcd, EtcdUnavailable
from wheelsched.server.process import NodeProcess, kill_process, read_log, terminate_process


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


class LocalCluster:
    """Nodes of one cluster on this machine, all on one data root."""

    def __init__(self, workdir: Path, etcd: LocalEtcd, name: str, shards: int = 16,
                 ttl: int = 2, **flags: object) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.etcd = etcd
        self.name = name
        self.shards = shards
        self.data_root = self.workdir / "data"
        self.flags = {"etcd": etcd.endpoint, "cluster": name, "shards": shards, "lease_ttl": ttl,
                      "fsync": "always", "drain_seconds": 5, **flags}
        self.nodes: list[NodeProcess] = []

    def add_node(self) -> NodeProcess:
        i = len(self.nodes)
        node = NodeProcess(self.workdir, {**self.flags, "node_id": f"n{i}"},
                           data_dir=self.data_root, name=f"n{i}")
        self.nodes.append(node)
        return node.start()

    @property
    def seeds(self) -> str:
        return ",".join(n.target for n in self.nodes if n.running)

    def shard_map(self, via: NodeProcess | None = None):
        node = via or next(n for n in self.nodes if n.running)
        with Client(node.target, timeout=5) as c:
            return c.shard_map()

    def owners(self, via: NodeProcess | None = None) -> dict[int, str]:
        return {s.shard: s.owner_node_id for s in self.shard_map(via).shards}

    def serving_shards(self) -> dict[str, list[int]]:
        """node id -> shards it fires now (each node's own status)."""
        out = {}
        for node in self.nodes:
            if node.running:
                with Client(node.target, timeout=5) as c:
                    st = c.status()
                out[st.node_id] = sorted(s.shard for s in st.shards if s.firing)
        return out

    def wait_balanced(self, nodes: int, timeout: float = 30.0) -> dict[str, list[int]]:
        """Until every shard fires on exactly one node, each of ``nodes``
        nodes holds its fair share (floor..ceil of shards / nodes), and every
        node's view of etcd agrees (no hand-over under way)."""
        low, high = self.shards // nodes, -(-self.shards // nodes)
        deadline = time.monotonic() + timeout
        while True:
            serving = self.serving_shards()
            fired = sorted(s for shards in serving.values() for s in shards)
            if (fired == list(range(self.shards)) and len(serving) == nodes
                    and all(low <= len(v) <= high for v in serving.values())):
                expected = {s: node for node, shards in serving.items() for s in shards}
                if all(self.owners(n) == expected for n in self.nodes if n.running):
                    return serving
            if time.monotonic() > deadline:
                raise AssertionError(f"not balanced after {timeout}s: {serving}")
            time.sleep(0.1)

    def kill_all(self) -> None:
        for node in self.nodes:
            node.kill()
