"""Issue #7: TLS, mTLS and bearer tokens with roles, against a real node.

Certificates are made at test time with ``cryptography``: a server CA and
the node's certificate (SAN 127.0.0.1 and localhost), a client CA and a
client certificate, and a rogue CA with a certificate of its own.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from node_helpers import running_node

from wheelsched import errors
from wheelsched.client import Client, Worker
from wheelsched.v1 import worker_pb2, worker_pb2_grpc

ADMIN_TOKEN = "admin-token-0123456789abcdef"
READ_TOKEN = "read-token-0123456789abcdef"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool, server: bool = False):
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                        critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


class Pki:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)

        def key():
            return ec.generate_private_key(ec.SECP256R1())

        def save(name: str, data: bytes) -> Path:
            path = root / name
            path.write_bytes(data)
            return path

        ca_key, client_ca_key, rogue_key = key(), key(), key()
        self.ca = save("ca.pem", _cert("test CA", ca_key, "test CA", ca_key, ca=True))
        server_key = key()
        self.server_cert = save("server.pem", _cert("node", server_key, "test CA", ca_key, ca=False,
                                                     server=True))
        self.server_key = save("server.key", _key_pem(server_key))
        self.client_ca = save("client-ca.pem", _cert("client CA", client_ca_key, "client CA", client_ca_key,
                                                     ca=True))
        client_key = key()
        self.client_cert = save("client.pem", _cert("worker", client_key, "client CA", client_ca_key,
                                                    ca=False))
        self.client_key = save("client.key", _key_pem(client_key))
        self.rogue_ca = save("rogue-ca.pem", _cert("rogue CA", rogue_key, "rogue CA", rogue_key, ca=True))
        rogue_client = key()
        self.rogue_cert = save("rogue.pem", _cert("worker", rogue_client, "rogue CA", rogue_key, ca=False))
        self.rogue_key = save("rogue.key", _key_pem(rogue_client))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _refused(**kwargs) -> None:
    with Client(kwargs.pop("target"), timeout=3, **kwargs) as c, \
            pytest.raises(errors.WheelschedError) as info:
        c.status()
    assert info.value.status in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), info.value


def test_tls_client_needs_the_ca(tmp_path: Path, pki: Pki) -> None:
    with running_node(tmp_path, fsync="never", shards=2, tls_cert=pki.server_cert,
                      tls_key=pki.server_key) as node:
        _refused(target=node.target)  # plaintext against a TLS port
        _refused(target=node.target, tls_ca=str(pki.rogue_ca))  # a CA that did not sign it
        with Client(node.target, tls_ca=str(pki.ca)) as c:
            assert c.status().serving
            c.schedule(queue="q", id="tls-1", delay=3600)
            assert c.get("tls-1").state == "SCHEDULED"


def test_mtls_refuses_missing_and_wrong_client_certs(tmp_path: Path, pki: Pki) -> None:
    with running_node(tmp_path, fsync="never", shards=2, tls_cert=pki.server_cert,
                      tls_key=pki.server_key, tls_client_ca=pki.client_ca) as node:
        _refused(target=node.target, tls_ca=str(pki.ca))  # no client certificate
        _refused(target=node.target, tls_ca=str(pki.ca), tls_cert=str(pki.rogue_cert),
                 tls_key=str(pki.rogue_key))  # signed by the wrong CA
        with Client(node.target, tls_ca=str(pki.ca), tls_cert=str(pki.client_cert),
                    tls_key=str(pki.client_key)) as c:
            assert c.status().serving


@pytest.fixture(scope="module")
def token_node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator:
    tmp = tmp_path_factory.mktemp("tokens")
    tokens = tmp / "tokens"
    tokens.write_text(f"# token role\n{ADMIN_TOKEN} admin\n\n{READ_TOKEN}   read-only  # dashboards\n")
    with running_node(tmp, fsync="never", shards=2, tokens_file=tokens, tls_cert=pki.server_cert,
                      tls_key=pki.server_key) as node:
        yield node


def _client(node, pki: Pki, token: str | None) -> Client:
    return Client(node.target, timeout=5, tls_ca=str(pki.ca), token=token)


def test_tokens_unauthenticated(token_node, pki: Pki) -> None:
    for token in (None, "wrong-token-0123456789", ADMIN_TOKEN + "x"):
        with _client(token_node, pki, token) as c:
            for call in (c.status, lambda c=c: c.get("x"), lambda c=c: c.schedule(queue="q", delay=1)):
                with pytest.raises(errors.Unauthenticated):
                    call()
    # a malformed header is not a token either
    with Client(token_node.target, timeout=5, tls_ca=str(pki.ca),
                metadata=[("authorization", ADMIN_TOKEN)]) as c, pytest.raises(errors.Unauthenticated):
        c.status()


def test_read_only_token_reads_but_cannot_write(token_node, pki: Pki) -> None:
    with _client(token_node, pki, ADMIN_TOKEN) as admin, _client(token_node, pki, READ_TOKEN) as ro:
        admin.schedule(queue="q", id="ro-1", delay=3600)
        seq_before = [s.wal_last_seq for s in ro.status().shards]
        assert ro.get("ro-1").state == "SCHEDULED"
        assert [j.id for j in ro.list(queue="q")] == ["ro-1"]
        assert len(ro.shard_map().shards) == 2
        with pytest.raises(errors.NotFound):
            ro.get("nope")  # past auth, to the engine
        with pytest.raises(errors.PermissionDenied):
            ro.schedule(queue="q", id="ro-2", delay=1)
        with pytest.raises(errors.PermissionDenied):
            ro.schedule_many([{"queue": "q", "id": "ro-3", "delay": 1}])
        with pytest.raises(errors.PermissionDenied):
            ro.cancel("ro-1")
        with pytest.raises(errors.PermissionDenied):
            ro.requeue("ro-1")
        # the Worker service: stream, ack, extend
        worker = Worker(token_node.target, ["q"], lambda d: None, tls_ca=str(pki.ca), token=READ_TOKEN)
        worker.start()
        assert worker.wait(10)
        with pytest.raises(errors.PermissionDenied):
            worker.stop()
        channel = grpc.secure_channel(token_node.target, grpc.ssl_channel_credentials(pki.ca.read_bytes()))
        stub = worker_pb2_grpc.WorkerStub(channel)
        md = [("authorization", f"Bearer {READ_TOKEN}")]
        with pytest.raises(grpc.RpcError) as info:
            stub.Ack(worker_pb2.AckRequest(), metadata=md, timeout=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as info:
            stub.ExtendLeases(worker_pb2.ExtendLeasesRequest(), metadata=md, timeout=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # health checking stays open (no token)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        channel.close()
        # nothing the refused calls asked for happened
        assert [s.wal_last_seq for s in ro.status().shards] == seq_before
        assert ro.get("ro-1").state == "SCHEDULED"
        with pytest.raises(errors.NotFound):
            ro.get("ro-2")


def test_cli_tls_and_token(token_node, pki: Pki) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WHEELSCHED_")}
    env = {**base, "WHEELSCHED_TARGET": token_node.target, "WHEELSCHED_TLS_CA": str(pki.ca)}

    def jobs(*args: str, token: str | None) -> subprocess.CompletedProcess:
        e = dict(env)
        if token:
            e["WHEELSCHED_TOKEN"] = token
        return subprocess.run([sys.executable, "-m", "wheelsched", "jobs", *args], capture_output=True,
                              text=True, timeout=60, env=e)

    res = jobs("schedule", "--queue", "cli", "--id", "cli-1", "--delay", "3600", token=ADMIN_TOKEN)
    assert res.returncode == 0, res.stderr
    res = jobs("get", "cli-1", "--json", token=READ_TOKEN)
    assert res.returncode == 0 and '"SCHEDULED"' in res.stdout, res.stderr
    res = jobs("cancel", "cli-1", token=READ_TOKEN)
    assert res.returncode == 1 and "PERMISSION_DENIED" in res.stderr
    res = jobs("get", "cli-1", token=None)
    assert res.returncode == 1 and "UNAUTHENTICATED" in res.stderr
    res = jobs("get", "cli-1", "--token", ADMIN_TOKEN, token=None)
    assert res.returncode == 0, res.stderr


def test_bad_tokens_file_is_refused_at_start(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("short admin\n")
    res = subprocess.run([sys.executable, "-m", "wheelsched", "serve", "--data-dir", str(tmp_path / "d"),
                          "--listen", "127.0.0.1:0", "--tokens-file", str(tokens)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "at least 16 characters" in res.stderr
    tokens.write_text(f"{ADMIN_TOKEN} superuser\n")
    res = subprocess.run([sys.executable, "-m", "wheelsched", "serve", "--data-dir", str(tmp_path / "d"),
                          "--listen", "127.0.0.1:0", "--tokens-file", str(tokens)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert f"{tokens}:1: expected 'TOKEN ROLE'" in res.stderr
