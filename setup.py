"""The build: setuptools, with the sans-IO core (`sipserver/sip`, `routing` and `proxy`:
the work every message costs) compiled by mypyc when a C compiler and Python's headers
are at hand. That is the default; without them, or with SIPSERVER_PURE=1, or if mypyc
cannot compile it, the same modules install as plain Python and behave the same.
`sipserver --version` says which one is installed."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup

COMPILED = ("sipserver/sip", "sipserver/routing", "sipserver/proxy")
# One header line stays a tuple, which mypyc cannot subclass (see its module); the core's
# events keep their `name` and `level` as class attributes, which a compiled dataclass
# would turn into fields.
KEPT_PURE = {"sipserver/sip/header_line.py", "sipserver/proxy/events.py"}


def why_not_compiled() -> str | None:
    if os.environ.get("SIPSERVER_PURE"):
        return "SIPSERVER_PURE is set"
    # The compiler setuptools will call: $CC when set, else the one Python was built with.
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Debian: apt-get install python3-dev)"
    return None


def compiled_core() -> list[Extension]:
    reason = why_not_compiled()
    if reason is None:
        try:
            from mypyc.build import mypycify

            modules = sorted(str(path) for c in COMPILED for path in Path(c).glob("*.py"))
            # pip builds in an environment of its own, without our dependencies: what the
            # core imports from them (cryptography, in pki/) is typed Any for the build.
            # The types are checked in full by the test suite's mypy run, not here.
            flags = ["--ignore-missing-imports", "--follow-imports=silent"]
            extensions = mypycify(
                [*flags, *(m for m in modules if m not in KEPT_PURE)],
                opt_level="3",
                debug_level="0",
            )
        except (Exception, SystemExit) as exc:  # mypyc exits on a type error
            reason = f"mypyc failed: {exc!r}"
        else:
            for extension in extensions:
                extension.optional = True  # a compile error leaves the pure module in place
            return extensions
    print(f"sipserver: installing the pure-Python core: {reason}", file=sys.stderr)
    return []


setup(ext_modules=compiled_core())
