# -*- test-case-name: tests.test_protos -*-
"""Regenerate the Python code for the gateway's protos: ``python -m eventgw.protogen``.

Shell module: a development tool that runs ``grpc_tools.protoc``.

Development tool, not imported by the gateway at run time (it needs ``grpcio-tools``, a
development dependency).  It compiles

* ``protos/**/*.proto`` (the Event Broker contract and the CloudEvents format) into
  ``eventgw/_proto/...``, and
* ``tests/protos/**/*.proto`` (test-only services) into ``tests/_proto/...``,

with ``--python_out``, ``--grpc_python_out`` and ``--pyi_out``, and writes an empty
``__init__.py`` into every generated directory so the output is a regular package.  The
proto files sit under a path that starts with ``eventgw/_proto/`` (``tests/_proto/``),
so the module names protoc derives from the paths live inside our own packages.

Include path: the proto roots, grpcio-tools' bundled well-known types
(``google/protobuf/*.proto``) and googleapis-common-protos' files
(``google/api/annotations.proto``).  Generated files are never edited by hand;
``tests/test_protos.py`` regenerates into a temporary directory and fails when the
checked-in files differ.

Usage::

    python -m eventgw.protogen            # regenerate in the source tree
    python -m eventgw.protogen --out DIR  # write the tree under DIR instead
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Final

__all__ = ["PROTO_ROOTS", "generate", "generated_files", "main", "source_root"]

# (proto root relative to the source tree, output directory relative to the tree).
PROTO_ROOTS: Final[tuple[tuple[str, str], ...]] = (
    ("protos", "."),
    (os.path.join("tests", "protos"), "."),
)


def source_root() -> str:
    """The checkout this module belongs to (the directory holding ``protos/``)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _proto_files(root: str) -> list[str]:
    found = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(".proto"):
                found.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(found)


def _include_dirs() -> list[str]:
    import google.api
    import grpc_tools  # type: ignore[import-untyped]

    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    # google/api/annotations.proto ships inside googleapis-common-protos' package.
    google_api_dir = os.path.dirname(next(iter(google.api.__path__)))
    common = os.path.dirname(google_api_dir)
    return [wkt, common]


def generate(out_dir: str | None = None, tree: str | None = None) -> list[str]:
    """Compile every proto root; return the generated files relative to ``out_dir``.

    ``out_dir`` defaults to the source tree itself.
    """
    from grpc_tools import protoc

    tree = tree or source_root()
    out_dir = out_dir or tree
    roots = [os.path.join(tree, root) for root, _ in PROTO_ROOTS]
    includes = [*roots, *_include_dirs()]
    for (root, out_rel), root_abs in zip(PROTO_ROOTS, roots, strict=True):
        files = _proto_files(root_abs)
        if not files:
            continue
        target = os.path.join(out_dir, out_rel)
        os.makedirs(target, exist_ok=True)
        args = [
            "grpc_tools.protoc",
            *(f"-I{path}" for path in includes),
            f"--python_out={target}",
            f"--pyi_out={target}",
            f"--grpc_python_out={target}",
            *(os.path.join(root_abs, name) for name in files),
        ]
        status = protoc.main(args)
        if status != 0:
            raise RuntimeError(f"protoc failed for {root} (exit status {status})")
        for name in files:
            _add_init_files(target, os.path.dirname(name))
    return generated_files(out_dir)


def _add_init_files(out_dir: str, package_dir: str) -> None:
    # Every directory below the top-level package (eventgw/, tests/) gets an __init__.py.
    parts = package_dir.split(os.sep)
    for depth in range(2, len(parts) + 1):
        init = os.path.join(out_dir, *parts[:depth], "__init__.py")
        if not os.path.exists(init):
            with open(init, "w", encoding="utf-8"):
                pass


def generated_files(out_dir: str) -> list[str]:
    """The generated files under ``out_dir`` (``*_pb2*.py``, ``*.pyi``, ``__init__.py``)."""
    result = []
    for base in ("eventgw/_proto", "tests/_proto"):
        top = os.path.join(out_dir, base)
        for directory, _dirs, files in os.walk(top):
            if "__pycache__" in directory:
                continue
            for name in files:
                if name.endswith((".py", ".pyi")):
                    result.append(os.path.relpath(os.path.join(directory, name), out_dir))
    return sorted(result)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eventgw.protogen", description="Regenerate the protobuf/gRPC code."
    )
    parser.add_argument("--out", help="output directory (default: the source tree)")
    options = parser.parse_args(argv)
    for name in generate(options.out):
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
