"""Which build of the sans-IO core is running: compiled by mypyc, or plain Python."""

from __future__ import annotations

import importlib.machinery

import sipserver.sip.message


def core_build() -> str:
    """`compiled` when the core was built into extension modules (setup.py compiles `sip`,
    `routing` and `proxy` together or not at all), else `pure`."""
    compiled = sipserver.sip.message.__file__ or ""
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    return "compiled" if compiled.endswith(tuple(suffixes)) else "pure"
