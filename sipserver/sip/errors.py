"""Errors raised by the pure SIP layer, modelled on h11's Local/Remote split: each carries
the status a peer should get, so the shell can answer without knowing which one it was."""

from __future__ import annotations

from abc import ABC, abstractmethod

from sipserver.errors import SipServerError


class SipError(SipServerError, ABC):
    """A SIP protocol error. Abstract: raise RemoteProtocolError or LocalProtocolError."""

    def __init__(
        self, reason: str, status: int | None = None, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = headers  # extra headers for the error response, e.g. Unsupported
        # Set on the instance, not as a class default: a compiled (mypyc) class keeps
        # its attributes in slots that a class-level value does not fill.
        self.status: int = self.default_status() if status is None else status

    def default_status(self) -> int:
        return 400

    @property
    @abstractmethod
    def blame(self) -> str:
        """Whose fault it is: "remote" (the peer's bytes) or "local" (our own bug)."""


class RemoteProtocolError(SipError):
    """The peer sent something that breaks RFC 3261."""

    @property
    def blame(self) -> str:
        return "remote"


class LocalProtocolError(SipError):
    """We were asked to do something that breaks RFC 3261 (a bug of ours)."""

    @property
    def blame(self) -> str:
        return "local"

    def default_status(self) -> int:
        return 500
