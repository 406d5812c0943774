"""Keep grpc.aio's completion wake-ups from throttling the whole server.

How grpc.aio (the default "poller" engine, grpcio 1.85) hands completions
to asyncio: a poller thread takes each event off the C-core completion
queue, pushes it onto a queue and writes ONE byte to a socketpair; the
event loop watches the other end with ``add_reader`` and its callback,
``PollerCompletionQueue._handle_events`` (bound to the loop with
``functools.partial``), reads ONE byte and then drains
the WHOLE queue.

So every loop iteration that handles k > 1 events leaves k - 1 bytes
unread, and under steady load the unread bytes only grow. An AF_UNIX
stream socket charges each 1-byte write a whole buffer (~768 bytes here),
so after roughly 280 unread bytes the 208 KiB send buffer is full and the
poller thread blocks in ``write()``. From then on the server gets one
completion per event-loop iteration: every write, read and unary reply of
every call waits its turn. On a node at 10,000 dispatches/s with loop
iterations of several ms, that stalled single stream writes for 20-100 ms
while the worker had long received their bytes (measured with strace and
``ss -x``: Recv-Q 244 bytes, Send-Q 187,392 on the socketpair; the poller's
``write(fd, "1", 1)`` left unfinished).

The fix keeps grpc's own callback and runs it after reading away all but
one of the pending wake-up bytes (``FIONREAD`` says how many there are).
The callback's own ``recv(1)`` then takes the last one, and it drains every
queued event as before. Bytes are only ever added by the poller thread and
only taken on this loop, so the count can only grow between the ioctl and
our ``recv``: there is always at least one byte left for grpc's.

If grpc's internals differ (another engine, a renamed callback), nothing
matches and ``install`` returns False: the server runs as it would have.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import functools
import socket
import termios
from typing import Any

_CALLBACK_NAME = "_handle_events"
_OWNER_TYPE = "PollerCompletionQueue"
_INSTALLED = "_wheelsched_drains_wakeups"


def _poller_reader(loop: asyncio.AbstractEventLoop) -> tuple[socket.socket, Any] | None:
    """The (socket, callback) grpc.aio registered on ``loop``, if any."""
    selector = getattr(loop, "_selector", None)
    if selector is None:
        return None
    for key in list(selector.get_map().values()):
        handles = key.data
        reader = handles[0] if isinstance(handles, tuple) and handles else None
        callback = getattr(reader, "_callback", None)
        if not isinstance(key.fileobj, socket.socket):
            continue
        if getattr(callback, _INSTALLED, False):
            return key.fileobj, callback
        # grpcio 1.85 registers functools.partial(cq._handle_events, loop)
        method = callback.func if isinstance(callback, functools.partial) else callback
        owner = getattr(method, "__self__", None)
        if getattr(method, "__name__", "") == _CALLBACK_NAME and type(owner).__name__ == _OWNER_TYPE:
            return key.fileobj, callback
    return None


def install(loop: asyncio.AbstractEventLoop) -> bool:
    """Replace grpc.aio's wake-up reader on ``loop`` with one that never lets
    wake-up bytes pile up. Call after the first grpc.aio server or channel
    exists on this loop (that creates the completion queue). True if done."""
    found = _poller_reader(loop)
    if found is None:
        return False
    sock, handle_events = found
    if getattr(handle_events, _INSTALLED, False):
        return True
    pending = array.array("i", [0])
    fd = sock.fileno()
    recv = sock.recv

    def handle_events_draining() -> None:
        fcntl.ioctl(fd, termios.FIONREAD, pending, True)
        extra = pending[0] - 1
        if extra > 0:
            recv(extra)
        handle_events()

    setattr(handle_events_draining, _INSTALLED, True)
    loop.remove_reader(sock)
    loop.add_reader(sock, handle_events_draining)
    return True


def unread_wakeups(loop: asyncio.AbstractEventLoop) -> int | None:
    """How many wake-up bytes wait unread on grpc.aio's socketpair (tests, status)."""
    found = _poller_reader(loop)
    if found is None:
        return None
    pending = array.array("i", [0])
    fcntl.ioctl(found[0].fileno(), termios.FIONREAD, pending, True)
    return pending[0]
