"""The sans-IO rule: sip/, pki/ and routing/ (and the core) never do I/O or read a clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sipserver"
PURE = [
    *sorted((PACKAGE / "sip").glob("*.py")),
    *sorted((PACKAGE / "pki").glob("*.py")),
    *sorted((PACKAGE / "routing").glob("*.py")),
    PACKAGE / "core.py",
    PACKAGE / "proxy.py",
]
FORBIDDEN = {
    "trio",
    "socket",
    "ssl",
    "time",
    "asyncio",
    "selectors",
    "OpenSSL",
    "sipserver.transport",
    "sipserver.server",
    "os",
    "subprocess",
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_modules_import_no_io(path: Path) -> None:
    bad = {
        m for m in imported_modules(path) if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_pure_modules_read_no_clock() -> None:
    for path in PURE:
        text = path.read_text()
        assert "datetime.now" not in text and "dt.datetime.now" not in text, path
