"""The shape of the code, checked: imports go one way (cli -> server -> transport -> core
-> primitives), no module imports itself back through others, the pure core's whole import
closure is free of I/O, clocks and logging, and no module grows past 600 lines (one job per module; a
cap that forces cuts by length splits modules in the wrong places)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sipserver"
MAX_LINES = 600

# The pure core: nothing in their import closure may do I/O, read a clock or log.
PURE_ROOTS = (
    "sipserver.proxy",
    "sipserver.routing",
    "sipserver.sip",
    "sipserver.pki",
    "sipserver.config.schema",
    "sipserver.config.checks",
    "sipserver.config.choices",
    "sipserver.errors",
)
FORBIDDEN = {
    "trio",
    "socket",
    "ssl",
    "time",
    "asyncio",
    "selectors",
    "OpenSSL",
    "os",
    "subprocess",
    "structlog",
    "logging",
    "threading",
    "signal",
}
CLOCK_CALLS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "current_time"}

# Layers, lowest first: a module may import its own layer and those below it.
LAYERS = [
    (
        "sipserver.errors",
        "sipserver.sip",
        "sipserver.pki",
        "sipserver.config.checks",
        "sipserver.config.choices",
    ),
    ("sipserver.config.schema", "sipserver.routing"),
    ("sipserver.proxy",),
    ("sipserver.config", "sipserver.certstore", "sipserver.log", "sipserver.build"),
    ("sipserver.transport",),
    ("sipserver.server",),
    ("sipserver.commands.ping", "sipserver.commands.certs", "sipserver.commands.lab"),
    ("sipserver.commands.main", "sipserver.commands", "sipserver.__main__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every module `name` imports, whether at the top, in a function or under
    TYPE_CHECKING (a type-only import still ties the two modules together)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            for alias in node.names:
                if f"{node.module}.{alias.name}" in MODULES:
                    found.add(f"{node.module}.{alias.name}")
    return found


def ours(names: set[str]) -> set[str]:
    return {n for n in names if n in MODULES}


def closure(roots: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(ours(imports_of(name)) - seen)
    return seen


def layer(name: str) -> int:
    if name == "sipserver":  # the package root: version and server name only
        return 0
    for index, members in enumerate(LAYERS):
        if any(name == m or name.startswith(m + ".") for m in members):
            return index
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS")


PURE = sorted(closure([m for m in MODULES if m.startswith(PURE_ROOTS)]))


def test_the_pure_closure_stays_inside_the_pure_packages() -> None:
    outside = [m for m in PURE if not m.startswith(PURE_ROOTS) and m != "sipserver"]
    assert not outside, f"the pure core reaches {outside}"


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_no_io_clock_or_logging(name: str) -> None:
    bad = {m for m in imports_of(name) if m.split(".")[0] in FORBIDDEN}
    assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_read_no_clock(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text())
    calls = [
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in CLOCK_CALLS
    ]
    assert not calls, f"{name} calls {calls}"


def test_importing_the_core_loads_no_trio_structlog_or_shell() -> None:
    """At run time too. (cryptography and service-identity load socket and pyOpenSSL
    themselves; our own imports are checked above.)"""
    code = (
        "import sys, sipserver.proxy.core, sipserver.routing.router, sipserver.pki.select;"
        "print(' '.join(sorted(sys.modules)))"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    shell = {
        "sipserver.config.loader",
        "sipserver.config.reader",
        "sipserver.config.host",
        "sipserver.transport",
        "sipserver.server",
        "sipserver.certstore",
    }
    bad = {
        m
        for m in loaded
        if m.split(".")[0] in {"trio", "structlog"}
        or any(m == s or m.startswith(s + ".") for s in shell)
    }
    assert not bad, sorted(bad)


def test_no_import_cycles() -> None:
    graph = {name: ours(imports_of(name)) - {name} for name in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    assert not cycles, cycles


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_one_way(name: str) -> None:
    upward = {m for m in ours(imports_of(name)) if layer(m) > layer(name)}
    assert not upward, f"{name} (layer {layer(name)}) imports higher layers: {sorted(upward)}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES})"
