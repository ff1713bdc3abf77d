"""structlog set-up: JSON lines (orjson, written as bytes) for daemons and pipes, readable
console output on a TTY. Every string field is valid UTF-8 in the output: bytes a peer sent
that do not decode are shown escaped, never as lone surrogates a strict JSON parser
rejects."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_threshold = logging.INFO


# The address of the connection whose task this is, as bound on its log lines. Kept here
# too: reading it back from structlog's context copies the whole context, on every call line.
_connection_remote: ContextVar[str | None] = ContextVar("sipserver_connection_remote", default=None)


def bind_connection(**fields: Any) -> None:
    """Bind a connection's fields (its remote address among them) to this task's lines."""
    structlog.contextvars.bind_contextvars(**fields)
    if "remote" in fields:
        _connection_remote.set(fields["remote"])


def clear_connection() -> None:
    """This task's lines are no connection's (a task started by another connection's)."""
    structlog.contextvars.clear_contextvars()
    _connection_remote.set(None)


def connection_remote() -> str | None:
    """The remote address bound to this task's lines, if any."""
    return _connection_remote.get()


def enabled(level: str) -> bool:
    """Would a line at this level be written? (So that callers can skip building it.)"""
    return _LEVELS.get(level, logging.ERROR) >= _threshold


def _tidy(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Time, level and event first so lines scan well; absent facts left out, not null."""
    head = {key: event[key] for key in ("timestamp", "level", "event") if key in event}
    rest = {key: value for key, value in event.items() if key not in head and value is not None}
    return head | rest


def _text(value: str) -> str:
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _valid_utf8(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = _text(value)
        elif isinstance(value, list | tuple):
            event[key] = [_text(item) if isinstance(item, str) else item for item in value]
    return event


def _worker_field(worker: int | str) -> Any:
    def add(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        event["worker"] = worker
        return event

    return add


def _json_bytes(event: EventDict, **_: Any) -> bytes:
    return orjson.dumps(event, default=str)


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    worker: int | str | None = None,
) -> None:
    """`worker`: with several worker processes, which one writes (every line says so)."""
    global _threshold
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any
    factory: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
        exc: list[Any] = []
        factory = structlog.WriteLoggerFactory(file=stream)
    else:
        exc = [structlog.processors.dict_tracebacks]
        binary = getattr(stream, "buffer", None)
        if binary is not None:
            renderer = structlog.processors.JSONRenderer(serializer=_json_bytes)
            factory = structlog.BytesLoggerFactory(file=binary)
        else:  # a text-only stream (tests): same JSON, as text
            renderer = structlog.processors.JSONRenderer(
                serializer=lambda event, **kw: _json_bytes(event).decode()
            )
            factory = structlog.WriteLoggerFactory(file=stream)
    _threshold = _LEVELS[level]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *([_worker_field(worker)] if worker is not None else []),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _tidy,
            *exc,
            _valid_utf8,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_threshold),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
