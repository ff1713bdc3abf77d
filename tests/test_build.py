"""The build: the sans-IO core compiled by mypyc (the default wherever a C compiler and
Python's headers are) passes the unit tests, real proxied calls and the hostile-input
tests, and without a compiler the build installs the plain-Python modules instead. The
rest of the suite runs on the checkout as it is: the plain-Python build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "build", "*.so", "__pycache__", ".*_cache", ".hypothesis", "lab"
)


def copy_of_the_checkout(folder: Path) -> Path:
    tree = folder / "checkout"
    shutil.copytree(REPO, tree, ignore=NOT_COPIED)
    return tree


def build_in_place(tree: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tree,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=900,
    )


def core_build(tree: Path) -> str:
    return subprocess.run(
        [sys.executable, "-c", "from sipserver.build import core_build; print(core_build())"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_the_compiled_core_passes_the_unit_tests_and_real_calls(tmp_path: Path) -> None:
    tree = copy_of_the_checkout(tmp_path)
    # Built as `pip install .` builds it in a fresh venv: in an environment of its own,
    # before any of our dependencies is installed (a build that needs them, even only
    # for mypy to find their types, would fall back to plain Python there).
    subprocess.run([sys.executable, "-m", "venv", tmp_path / "venv"], check=True, timeout=120)
    pip = [str(tmp_path / "venv" / "bin" / "python"), "-m", "pip", "wheel", "-v", "--no-deps"]
    built = subprocess.run(
        [*pip, "--wheel-dir", str(tmp_path), str(tree)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "pure-Python core" not in built.stdout + built.stderr, (
        "the core was not compiled; it needs a C compiler and Python's headers "
        f"(Debian: apt-get install gcc python3-dev):\n{built.stdout[-3000:]}"
    )
    (wheel,) = tmp_path.glob("sipserver-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        compiled = [name for name in archive.namelist() if name.endswith(".so")]
        archive.extractall(tree, compiled)  # beside the modules, as an in-place build puts them
    modules = {name.split(".")[0] for name in compiled}
    assert {"sipserver/sip/message", "sipserver/proxy/core", "sipserver/routing/router"} <= modules
    assert (
        not {"sipserver/sip/header_line", "sipserver/proxy/events", "sipserver/server/app"}
        & modules
    )
    assert core_build(tree) == "compiled"
    tests = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider"),
            *("tests/unit", "tests/e2e/test_proxy_calls.py", "tests/e2e/test_hardening.py"),
        ],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert tests.returncode == 0, tests.stdout[-5000:]
    assert " passed" in tests.stdout.splitlines()[-1]


def test_without_a_c_compiler_the_build_keeps_the_plain_python_core(tmp_path: Path) -> None:
    tree = copy_of_the_checkout(tmp_path)
    built = build_in_place(tree, CC=str(tmp_path / "no-such-cc"))
    assert built.returncode == 0, built.stderr[-3000:]
    assert "installing the pure-Python core: no C compiler" in built.stderr
    assert list((tree / "sipserver").rglob("*.so")) == []
    assert core_build(tree) == "pure"


def test_the_plain_python_build_can_be_chosen(tmp_path: Path) -> None:
    tree = copy_of_the_checkout(tmp_path)
    built = build_in_place(tree, SIPSERVER_PURE="1")
    assert built.returncode == 0 and "SIPSERVER_PURE is set" in built.stderr
    assert core_build(tree) == "pure"
