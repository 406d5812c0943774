"""The one exception hierarchy of wheelsched.

Every error the core can raise is a ``WheelschedError``. Each class names the
gRPC status it becomes (as a string, so the core never imports grpc); the
server turns them into status codes in exactly one place
(``wheelsched.server.status``), and the client turns status codes back into
these classes, so callers catch the same exceptions in-process and remotely.
"""

from __future__ import annotations


class WheelschedError(Exception):
    """Base class. ``status`` is the gRPC status code name it maps to."""

    status = "INTERNAL"


class InvalidArgument(WheelschedError, ValueError):
    """A request field is malformed or out of range. Nothing was changed."""

    status = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(WheelschedError, KeyError):
    status = "NOT_FOUND"

    def __str__(self) -> str:  # KeyError quotes its argument; we want the text
        return str(self.args[0]) if self.args else "not found"


class AlreadyExists(WheelschedError):
    """Same job id, different spec (the same spec again is not an error)."""

    status = "ALREADY_EXISTS"


class FailedPrecondition(WheelschedError):
    """The operation does not fit the current state (e.g. an ack from a stale
    epoch or for an attempt that is no longer leased)."""

    status = "FAILED_PRECONDITION"


class ResourceExhausted(WheelschedError):
    """A configured limit was hit (payload size, pending jobs per shard, ...)."""

    status = "RESOURCE_EXHAUSTED"


class Unavailable(WheelschedError):
    """The node cannot serve this right now (shutting down, shard not owned,
    write-ahead log failed). Safe to retry elsewhere or later."""

    status = "UNAVAILABLE"


class NotOwner(Unavailable):
    """The job's shard is not owned by this node (cluster mode): a redirect.

    ``owner`` is the address of the node that owns the shard as far as this
    node knows ("" while the shard is between owners); the server sends it
    in trailing metadata and the client retries there."""

    def __init__(self, shard: int, owner: str = "", epoch: int = 0) -> None:
        where = f"node at {owner} (epoch {epoch})" if owner else "no node right now"
        super().__init__(f"shard {shard} is owned by {where}")
        self.shard = shard
        self.owner = owner
        self.epoch = epoch


class Unauthenticated(WheelschedError):
    status = "UNAUTHENTICATED"


class PermissionDenied(WheelschedError):
    status = "PERMISSION_DENIED"
