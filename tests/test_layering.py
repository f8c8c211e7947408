"""The layering rule, derived from the code: the sans-IO core imports no I/O and no shell.

Every module of the package says which layer it is in: its docstring has a paragraph that
starts with ``Core module`` or ``Shell module``.  A core module may import the standard
library (but no clock, socket or event loop), ``h2``/``hpack``/``hyperframe``, protobuf,
the YAML and validation libraries, and other core modules; never Twisted, grpcio, txaio
or a shell module -- by absolute or relative import, at the top or inside a function.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "eventgw"

#: Roots a core module must not import: I/O, threads, clocks and event loops.
FORBIDDEN_ROOTS = frozenset(
    {"twisted", "grpc", "grpc_tools", "txaio", "socket", "ssl", "select", "selectors",
     "asyncio", "threading", "time", "subprocess"}
)

#: Modules the architecture puts in the core.  Each must exist and carry the core marker,
#: so a move or a rename cannot silently shrink what the rule checks.
EXPECTED_CORE = frozenset(
    {
        "eventgw.errors", "eventgw.config", "eventgw.exchange", "eventgw.routing",
        "eventgw.headers", "eventgw.http2", "eventgw.downstream.sniff",
        "eventgw.downstream.http1parse", "eventgw.downstream.http1frame",
        "eventgw.upstream.h1client", "eventgw.upstream.balancer",
        "eventgw.events.cloudevents", "eventgw.events.transcode", "eventgw.grpc.relay",
        "eventgw.auth.guard", "eventgw.auth.ratelimit", "eventgw.auth.cors",
        "eventgw.auth.identity", "eventgw.auth.jwt",
        "eventgw.grpc.webcodec", "eventgw.api.wsframes",
        "eventgw.logformat",
    }
)

_MARKER = re.compile(r"^(Core|Shell) module\b", re.MULTILINE)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    """Every hand-written module of the package, by dotted name."""
    return {
        module_name(path): path
        for path in sorted(PACKAGE.rglob("*.py"))
        if "_proto" not in path.relative_to(PACKAGE).parts
    }


def layer_of(source: str) -> str | None:
    """``"core"``, ``"shell"``, or ``None`` when the docstring carries no marker."""
    doc = ast.get_docstring(ast.parse(source)) or ""
    found = {m.group(1).lower() for m in _MARKER.finditer(doc)}
    return found.pop() if len(found) == 1 else None


def imported_modules(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """Every module ``source`` imports, anywhere in it, relative imports resolved.

    ``from pkg import mod`` counts as importing ``pkg.mod`` when that is a module of
    ``known``.
    """
    tree = ast.parse(source)
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    found.add(f"{target}.{alias.name}")
    return found


def violations(
    name: str, source: str, is_package: bool, layers: dict[str, str | None]
) -> list[str]:
    """What a core module imports that it must not."""
    bad = []
    for imported in sorted(imported_modules(source, name, is_package, set(layers))):
        root = imported.split(".")[0]
        if root in FORBIDDEN_ROOTS:
            bad.append(f"{name} imports {imported} (I/O in the core)")
        elif layers.get(imported) == "shell":
            bad.append(f"{name} imports {imported} (a shell module)")
    return bad


class LayeringTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.modules = package_modules()
        self.sources = {name: path.read_text() for name, path in self.modules.items()}
        self.layers = {name: layer_of(src) for name, src in self.sources.items()}

    def test_every_module_declares_its_layer(self) -> None:
        """Each module's docstring says Core module or Shell module (exactly one)."""
        unmarked = sorted(name for name, layer in self.layers.items() if layer is None)
        self.assertEqual(unmarked, [])
        self.assertGreater(len(self.layers), 30)

    def test_expected_core_modules_exist_and_are_core(self) -> None:
        """The modules the architecture names as core exist and carry the core marker."""
        missing = sorted(EXPECTED_CORE - set(self.modules))
        self.assertEqual(missing, [], "expected core modules are missing")
        not_core = sorted(n for n in EXPECTED_CORE if self.layers[n] != "core")
        self.assertEqual(not_core, [])

    def test_core_imports_no_io_and_no_shell(self) -> None:
        """No core module imports Twisted, grpcio, sockets, a clock or a shell module."""
        bad: list[str] = []
        core = [n for n, layer in self.layers.items() if layer == "core"]
        for name in core:
            is_package = self.modules[name].name == "__init__.py"
            bad.extend(violations(name, self.sources[name], is_package, self.layers))
        self.assertEqual(bad, [])
        self.assertGreaterEqual(len(core), len(EXPECTED_CORE))


class DetectorTests(SynchronousTestCase):
    """The scanner itself can fail: each forbidden shape is seen."""

    layers: dict[str, str | None] = {
        "eventgw.grpc": "core", "eventgw.grpc.relay": "core",
        "eventgw.grpc.target": "shell", "eventgw.service": "shell",
    }

    def check(self, source: str) -> list[str]:
        return violations("eventgw.grpc.relay", source, False, self.layers)

    def test_absolute_twisted_import(self) -> None:
        """``import twisted.internet`` and ``from twisted import x`` are caught."""
        self.assertEqual(len(self.check("import twisted.internet\n")), 1)
        self.assertEqual(len(self.check("from twisted.logger import Logger\n")), 1)

    def test_import_inside_a_function(self) -> None:
        """An import hidden in a function body is still an import."""
        self.assertEqual(len(self.check("def f():\n    import grpc\n")), 1)

    def test_relative_import_of_a_shell_module(self) -> None:
        """``from . import target`` and ``from .target import X`` resolve to the shell module."""
        self.assertIn("a shell module", self.check("from . import target\n")[0])
        self.assertIn("a shell module", self.check("from .target import GrpcRelay\n")[0])
        self.assertIn("a shell module", self.check("from .. import service\n")[0])

    def test_core_to_core_is_allowed(self) -> None:
        """Core may import core and the allowed libraries."""
        self.assertEqual(self.check("from eventgw.grpc import relay\nimport h2.events\n"), [])

    def test_marker_is_read_from_the_docstring(self) -> None:
        """The layer comes from a docstring paragraph; two markers or none are no layer."""
        self.assertEqual(layer_of('"""X.\n\nCore module: no I/O."""\n'), "core")
        self.assertEqual(layer_of('"""X.\n\nShell module."""\n'), "shell")
        self.assertIsNone(layer_of('"""X."""\n'))
        self.assertIsNone(layer_of('"""X.\n\nCore module.\n\nShell module."""\n'))
