"""The one place where wheelsched errors and gRPC status codes meet.

The server aborts an RPC with ``to_status(exc)``; the client turns a failed
call back into the same exception class with ``from_rpc_error``. Codes are
named by ``WheelschedError.status`` so the core never imports grpc.
"""

from __future__ import annotations

import grpc

from wheelsched import errors

_BY_STATUS: dict[str, type[errors.WheelschedError]] = {
    cls.status: cls
    for cls in (
        errors.InvalidArgument,
        errors.NotFound,
        errors.AlreadyExists,
        errors.FailedPrecondition,
        errors.ResourceExhausted,
        errors.Unavailable,
        errors.Unauthenticated,
        errors.PermissionDenied,
    )
}


# Trailing metadata of a NotOwner answer: where the job's shard lives.
OWNER_KEY = "wheelsched-owner"
SHARD_KEY = "wheelsched-shard"
EPOCH_KEY = "wheelsched-epoch"


# A negative retry pushback tells a gRPC client not to retry this answer
# itself (our channels retry UNAVAILABLE): a redirect must reach the caller
# at once, not after retries at the same node.
NO_RETRY = ("grpc-retry-pushback-ms", "-1")


def redirect_metadata(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """Trailing metadata that turns an error into a redirect (empty if it is not one)."""
    if isinstance(exc, errors.NotOwner):
        return ((SHARD_KEY, str(exc.shard)), (OWNER_KEY, exc.owner), (EPOCH_KEY, str(exc.epoch)),
                NO_RETRY)
    return ()


def status_code(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status for an exception: its class's, INTERNAL otherwise."""
    name = getattr(exc, "status", "INTERNAL")
    return getattr(grpc.StatusCode, name, grpc.StatusCode.INTERNAL)


def code_number(exc: BaseException) -> int:
    """google.rpc.Code number of an exception (for per-item results in batches)."""
    return status_code(exc).value[0]


def from_code(code: grpc.StatusCode | int, message: str) -> errors.WheelschedError:
    """The exception for a status code (a StatusCode or its number) and message."""
    if isinstance(code, int):
        code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    cls = _BY_STATUS.get(code.name, errors.WheelschedError)
    if cls is errors.InvalidArgument:
        field, _, text = message.partition(": ")
        return errors.InvalidArgument(field, text) if text else errors.InvalidArgument("request", message)
    exc = cls(message)
    if cls is errors.WheelschedError:
        exc.status = code.name  # keep the code visible (UNKNOWN, DEADLINE_EXCEEDED, ...)
    return exc


def from_rpc_error(err: grpc.RpcError) -> errors.WheelschedError:
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    if trailing:
        meta = {key: value for key, value in trailing if isinstance(value, str)}
        if SHARD_KEY in meta and meta[SHARD_KEY].isdigit():
            epoch = meta.get(EPOCH_KEY, "0")
            return errors.NotOwner(int(meta[SHARD_KEY]), meta.get(OWNER_KEY, ""),
                                   int(epoch) if epoch.isdigit() else 0)
    return from_code(err.code(), err.details() or "")
