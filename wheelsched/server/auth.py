"""Bearer-token authentication and roles, checked on every RPC.

Tokens file (``--tokens-file``): one ``TOKEN ROLE`` per line, ``#`` starts a
comment, blank lines are skipped. Roles:

- ``admin``: every RPC.
- ``read-only``: GetJob, ListJobs and the Node service (shard map, status).

A call without a valid ``authorization: Bearer TOKEN`` metadata entry fails
with ``UNAUTHENTICATED``; a read-only token calling anything else (schedule,
cancel, requeue, the Worker service: stream, ack, extend) fails with
``PERMISSION_DENIED``. gRPC health checking and server reflection stay open
(load balancers and grpcurl probe them without credentials). Unknown
methods are denied by default: only the listed methods are read-only.

Tokens are kept as SHA-256 digests, so the comparison does not leak a
token's prefix through timing and the node keeps no plain copy after start.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc

from wheelsched.config import ConfigError
from wheelsched.server.metrics import wrap_behavior

ADMIN = "admin"
READ_ONLY = "read-only"
ROLES = (ADMIN, READ_ONLY)

OPEN_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})
READ_METHODS = frozenset({
    "/wheelsched.v1.Scheduler/GetJob",
    "/wheelsched.v1.Scheduler/ListJobs",
    "/wheelsched.v1.Node/GetShardMap",
    "/wheelsched.v1.Node/GetNodeStatus",
    "/wheelsched.v1.Node/GetJobStates",
})


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def load_tokens(path: str | Path) -> dict[bytes, str]:
    """token digest -> role, from a tokens file; ConfigError names the line."""
    return {_digest(token): role for token, role in _read_tokens(path)}


def peer_token(path: str | Path) -> str:
    """The token a node presents to the other nodes of its cluster (they
    share the tokens file): the first one in it."""
    return _read_tokens(path)[0][0]


def _read_tokens(path: str | Path) -> list[tuple[str, str]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"tokens_file: cannot read {path}: {exc.strerror}") from None
    tokens: list[tuple[str, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ROLES:
            raise ConfigError(f"tokens_file: {path}:{n}: expected 'TOKEN ROLE' with ROLE one of "
                              f"{', '.join(ROLES)}")
        token, role = parts
        if len(token) < 16:
            raise ConfigError(f"tokens_file: {path}:{n}: tokens must be at least 16 characters")
        tokens.append((token, role))
    if not tokens:
        raise ConfigError(f"tokens_file: {path} holds no tokens")
    return tokens


def _deny(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    def wrap(behavior, is_gen):
        async def refuse(request, context):
            await context.abort(code, message)
        return refuse

    # A coroutine serves every kind of RPC in grpc.aio (streams can write
    # through the context), so one refusal fits all four.
    return wrap_behavior(handler, wrap)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: dict[bytes, str]) -> None:
        self.tokens = tokens

    def role(self, metadata) -> str | None:
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                if scheme.lower() == "bearer" and token:
                    return self.tokens.get(_digest(token.strip()))
        return None

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        service = method[1:].partition("/")[0]
        handler = await continuation(handler_call_details)
        if handler is None or service in OPEN_SERVICES:
            return handler
        role = self.role(handler_call_details.invocation_metadata)
        if role is None:
            return _deny(handler, grpc.StatusCode.UNAUTHENTICATED,
                         "a valid bearer token is required (authorization: Bearer TOKEN)")
        if role != ADMIN and method not in READ_METHODS:
            return _deny(handler, grpc.StatusCode.PERMISSION_DENIED,
                         f"role {role} may not call {method}")
        return handler
