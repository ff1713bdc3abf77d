"""The root of every error sipserver raises on purpose, so a caller can catch ours and
let a bug (any other exception) surface."""

from __future__ import annotations


class SipServerError(Exception):
    """Base of all sipserver errors."""


class ConfigError(SipServerError):
    """A configuration file (or override) is invalid. Names the key path and the line."""

    def __init__(
        self, message: str, key: str = "", line: int | None = None, path: str = ""
    ) -> None:
        self.message = message
        self.key = key
        self.line = line
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        head = f"{where}: " if where else ""
        return f"{head}{self.key}: {self.message}" if self.key else f"{head}{self.message}"
