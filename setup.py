"""Build steps that pyproject.toml cannot express.

1. The timing-wheel extension (``wheelsched._wheel_c``, C in ``csrc/`` wrapped
   by Cython). ``WHEELSCHED_PURE_PYTHON=1`` skips it; the package then runs on
   the pure-Python twin.
2. Python code for the gRPC API, generated from ``proto/`` with grpcio-tools
   into ``wheelsched/v1/``. Generated files are not committed: every build,
   editable or not, regenerates them, so they can never go stale.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Command, Extension, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

ROOT = Path(__file__).resolve().parent
PURE = os.environ.get("WHEELSCHED_PURE_PYTHON", "") not in ("", "0")


def generate_protos() -> None:
    """Run protoc (from grpcio-tools) over proto/wheelsched/v1/*.proto."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proto").rglob("*.proto"))
    if not protos:
        return
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{include}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *[str(ROOT / p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + " ".join(protos))


class GenerateProtos(Command):
    description = "generate wheelsched/v1/*_pb2*.py from proto/"
    user_options: list = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        generate_protos()


class BuildPy(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


class Develop(develop):
    def run(self) -> None:
        generate_protos()
        super().run()


def extensions() -> list[Extension]:
    if PURE:
        return []
    from Cython.Build import cythonize

    ext = Extension(
        "wheelsched._wheel_c",
        sources=["wheelsched/_wheel_c.pyx", "csrc/wheel.c"],
        include_dirs=["csrc"],
        extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-function"],
    )
    walscan = Extension(
        "wheelsched.wal._scan_c",
        sources=["wheelsched/wal/_scan_c.pyx", "csrc/walscan.c"],
        include_dirs=["csrc"],
        extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-function"],
    )
    ticker = Extension(
        "wheelsched._ticker_c",
        sources=["wheelsched/_ticker_c.pyx", "csrc/waketimer.c"],
        include_dirs=["csrc"],
        extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-function"],
    )
    gc_util = Extension("wheelsched._gc_c", sources=["wheelsched/_gc_c.pyx"])
    return cythonize([ext, walscan, ticker, gc_util], language_level=3,
                     compiler_directives={"embedsignature": True})


setup(
    ext_modules=extensions(),
    cmdclass={"build_py": BuildPy, "develop": Develop, "generate_protos": GenerateProtos},
)
