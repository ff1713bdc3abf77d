"""A header line's fields, read and made from the compiled core.

A `Header` is a NamedTuple in plain Python (see `header_line`). Compiled code reads a
field name such as `header.key` through Python's generic attribute lookup, and the core
reads about a thousand per call (each header of each message, for every lookup); indexing
the tuple is a C array read. Making one through its class runs the interpreted `__new__`.
So the core's hot paths index with these names and make lines with `make_header`.
"""

from __future__ import annotations

from typing import Final

from sipserver.sip.header_line import Header
from sipserver.sip.headers import header_key

NAME: Final = 0
VALUE: Final = 1
RAW: Final = 2  # the exact wire text, None once edited
KEY: Final = 3  # lower-case long name


def make_header(name: str, value: str, raw: str | None = None) -> Header:
    """The same line as `Header(name, value, raw)`, without the interpreted `__new__`."""
    return tuple.__new__(Header, (name, value, raw, header_key(name)))


def header_text(header: Header) -> str:
    """The line as it goes on the wire (bytes a peer sent kept as surrogate escapes)."""
    raw = header[RAW]
    return raw if raw is not None else f"{header[NAME]}: {header[VALUE]}"
