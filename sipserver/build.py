"""Which build of the SIP layer is running: compiled by mypyc, or plain Python."""

from __future__ import annotations

import importlib.machinery

import sipserver.sip.message


def core_build() -> str:
    """ "compiled" when `sipserver.sip` was built into extension modules, else "pure"."""
    compiled = sipserver.sip.message.__file__ or ""
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    return "compiled" if compiled.endswith(tuple(suffixes)) else "pure"
