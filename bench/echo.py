"""A tiny gRPC echo server: the transport baseline for the scheduling bench.

    .venv/bin/python -m bench.echo [--listen 127.0.0.1:0]

One generic unary handler over raw bytes (``/bench.Echo/Echo`` returns its
request), served by ``grpc.aio`` with the node's server options: the same
gRPC stack, the same event-loop server, minus everything wheelsched does.
Prints ``listening on HOST:PORT`` on stderr once serving, like the node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import grpc

METHOD = "/bench.Echo/Echo"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def serve(listen: str) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.so_reuseport", 0)])
    handler = grpc.unary_unary_rpc_method_handler(_echo)  # no (de)serializers: bytes in, bytes out
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),))
    port = server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {listen.rsplit(':', 1)[0]}:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    await server.stop(grace=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args(argv)
    sys.setswitchinterval(0.0005)  # as the node does (wheelsched.server.node.run)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
