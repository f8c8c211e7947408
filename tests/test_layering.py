"""The sans-IO core must not import Twisted, grpc, txaio or socket (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parent.parent / "eventgw"

CORE_MODULES = [
    "errors", "config", "routing", "exchange", "sniff", "http1", "h1client", "headers",
    "relay", "cloudevents", "transcode", "h2limits",
]
FORBIDDEN = {"twisted", "grpc", "txaio", "socket", "time", "asyncio"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


class LayeringTests(SynchronousTestCase):
    def test_core_modules_import_no_io(self) -> None:
        """No core module imports Twisted, grpc, txaio, socket or a clock module."""
        checked = 0
        for name in CORE_MODULES:
            path = PACKAGE / f"{name}.py"
            if not path.exists():
                continue
            checked += 1
            bad = imported_roots(path) & FORBIDDEN
            self.assertEqual(bad, set(), f"eventgw/{name}.py imports {sorted(bad)}")
        self.assertGreaterEqual(checked, 5)

    def test_detector_sees_forbidden_import(self) -> None:
        """The import scanner finds both import forms (so the rule can fail)."""
        sample = PACKAGE.parent / "tests" / "test_layering.py"
        self.assertIn("twisted", imported_roots(sample))
