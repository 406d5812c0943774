"""grpc.aio completion wake-ups: wheelsched.server.aio_poller.

The bug it works around needs sustained load to show (the wake-up bytes pile
up over many loop iterations), so the mechanism is checked on a stand-in
with grpc's exact shape (a ``PollerCompletionQueue._handle_events`` bound to
the loop with ``functools.partial``, reading one byte per call), and the
real grpc.aio is checked for that shape and for calls still completing.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from wheelsched.server import aio_poller


class PollerCompletionQueue:
    """grpc's shape: one byte read per wake-up, then every queued event."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.read_sock, self.write_sock = socket.socketpair()
        self.queue: list[int] = []
        self.handled: list[int] = []
        loop.add_reader(self.read_sock, functools.partial(self._handle_events, loop))

    def post(self, n: int) -> None:  # what the poller thread does per event
        for i in range(n):
            self.queue.append(i)
            self.write_sock.send(b"1")

    def _handle_events(self, loop: asyncio.AbstractEventLoop) -> None:
        self.read_sock.recv(1)
        self.handled.extend(self.queue)
        self.queue.clear()

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self.read_sock)
        self.read_sock.close()
        self.write_sock.close()


async def one_loop_pass() -> None:
    # our task's step runs before the reader callbacks of the same iteration
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def _pile_up(install: bool) -> tuple[bool | None, int, int]:
    loop = asyncio.get_running_loop()
    cq = PollerCompletionQueue(loop)
    try:
        installed = aio_poller.install(loop) if install else None
        cq.post(50)  # 50 events arrive while the loop is busy elsewhere
        await one_loop_pass()
        return installed, len(cq.handled), aio_poller.unread_wakeups(loop) or 0
    finally:
        cq.close(loop)


def test_one_pass_handles_every_event_and_leaves_no_wakeup_bytes():
    installed, handled, unread = asyncio.run(_pile_up(install=True))
    assert installed is True
    assert handled == 50
    assert unread == 0


def test_without_it_one_pass_leaves_all_but_one_wakeup_byte():
    """The behaviour being fixed: each pass reads one byte, whatever came."""
    installed, handled, unread = asyncio.run(_pile_up(install=False))
    assert installed is None
    assert handled == 50
    assert unread == 49


def test_install_is_idempotent_and_finds_nothing_on_a_loop_without_grpc():
    async def main() -> tuple[bool, bool, bool, int | None]:
        loop = asyncio.get_running_loop()
        bare = aio_poller.install(loop)
        cq = PollerCompletionQueue(loop)
        try:
            first, second = aio_poller.install(loop), aio_poller.install(loop)
            cq.post(3)
            await one_loop_pass()
            return bare, first, second, aio_poller.unread_wakeups(loop)
        finally:
            cq.close(loop)

    assert asyncio.run(main()) == (False, True, True, 0)


def test_real_grpc_aio_has_the_shape_and_calls_complete_under_a_busy_loop():
    async def main() -> tuple[bool, int, int]:
        loop = asyncio.get_running_loop()
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            installed = aio_poller.install(loop)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                request = health_pb2.HealthCheckRequest()
                calls = [asyncio.ensure_future(stub.Check(request)) for _ in range(200)]
                most_unread = 0
                while not all(c.done() for c in calls):
                    time.sleep(0.005)  # the loop is busy: completions queue up
                    await one_loop_pass()
                    most_unread = max(most_unread, aio_poller.unread_wakeups(loop) or 0)
                replies = await asyncio.gather(*calls)
            serving = sum(r.status == health_pb2.HealthCheckResponse.SERVING for r in replies)
            return installed, serving, most_unread
        finally:
            await server.stop(None)

    installed, serving, most_unread = asyncio.run(main())
    assert installed is True, "grpc.aio's wake-up reader changed shape: update aio_poller"
    assert serving == 200
    # what arrived since the last pass, never a backlog (the bug kept ~280)
    assert most_unread < 50
