"""``wheelsched`` command line: one argparse tree, each command group in its
own module exposing ``register(subparsers)``.

Command groups are imported lazily by name so that ``wheelsched wal verify``
does not pay for importing grpc.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module that defines it (module.register(subparsers) adds it)
COMMAND_MODULES = {
    "serve": "wheelsched.server.cli",
    "jobs": "wheelsched.client.cli",
    "cluster": "wheelsched.cluster.cli",
    "wal": "wheelsched.wal.cli",
    "demo": "wheelsched.demo",
    "bench": "wheelsched.benchcli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wheelsched", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMAND_MODULES.items():
        if only is not None and name != only:
            continue
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    first = argv[0] if argv and argv[0] in COMMAND_MODULES else None
    args = build_parser(only=first).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
