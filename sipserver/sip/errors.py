"""Errors raised by the pure SIP layer, modelled on h11's Local/Remote split."""

from __future__ import annotations


class SipError(Exception):
    """Base for SIP protocol errors. Carries the status a peer should get."""

    status: int = 400

    def __init__(
        self, reason: str, status: int | None = None, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = headers  # extra headers for the error response, e.g. Unsupported
        if status is not None:
            self.status = status


class RemoteProtocolError(SipError):
    """The peer sent something that breaks RFC 3261."""


class LocalProtocolError(SipError):
    """We were asked to do something that breaks RFC 3261 (a bug of ours)."""

    status = 500
