"""One header line: a tuple, which the garbage collector does not track.

This module stays plain Python when the rest of `sip/` is compiled: mypyc builds classes
of its own (tracked by the collector) and cannot subclass a tuple.
"""

from __future__ import annotations

from typing import NamedTuple

from sipserver.sip.headers import header_key


class _HeaderFields(NamedTuple):
    name: str
    value: str
    raw: str | None  # the exact wire text (folding included), None once edited
    key: str  # lower-case long name, for lookups (worked out once)


class Header(_HeaderFields):
    """One header line. Immutable: edits replace it. A tuple of strings and bytes, so the
    garbage collector stops tracking it, which keeps full collections short while many
    transactions hold their messages."""

    __slots__ = ()

    def __new__(cls, name: str, value: str, raw: str | None = None) -> Header:
        return tuple.__new__(cls, (name, value, raw, header_key(name)))

    def __getnewargs__(self) -> tuple[str, str, str | None]:
        return (self.name, self.value, self.raw)

    def text(self) -> str:
        """The line as it goes on the wire (bytes a peer sent kept as surrogate escapes)."""
        return self.raw if self.raw is not None else f"{self.name}: {self.value}"

    def to_bytes(self) -> bytes:
        return self.text().encode("utf-8", "surrogateescape")
