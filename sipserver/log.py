"""structlog set-up: JSON lines (orjson, written as bytes) for daemons and pipes, readable
console output on a TTY. Every string field is valid UTF-8 in the output: bytes a peer sent
that do not decode are shown escaped, never as lone surrogates a strict JSON parser
rejects."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
import structlog
from structlog.processors import dict_tracebacks
from structlog.typing import EventDict, Processor, WrappedLogger

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_threshold = logging.INFO


# The fields bound to this task's lines (its connection's address, peer and certificate):
# one context variable holding a dict that is replaced, never changed in place, so a task
# started from this one keeps what was bound then. structlog's own contextvars keep a
# variable per key, and merging them copies and walks the whole context on every line.
_NOTHING_BOUND: dict[str, Any] = {}
_bound: ContextVar[dict[str, Any]] = ContextVar("sipserver_log_fields", default=_NOTHING_BOUND)


def bind_connection(**fields: Any) -> None:
    """Bind a connection's fields (its remote address among them) to this task's lines."""
    _bound.set({**_bound.get(), **fields})


def clear_connection() -> None:
    """This task's lines are no connection's (a task started by another connection's)."""
    _bound.set(_NOTHING_BOUND)


def connection_remote() -> str | None:
    """The remote address bound to this task's lines, if any."""
    remote = _bound.get().get("remote")
    return remote if isinstance(remote, str) else None


def _merge_bound(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """The task's bound fields after the line's own (which win), as structlog's
    merge_contextvars orders them."""
    for key, value in _bound.get().items():
        event.setdefault(key, value)
    return event


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


def _utf8(value: Any) -> Any:
    """A string (or the strings of a list) with non-UTF-8 bytes written as escapes."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, list | tuple):
        return [_text(item) if isinstance(item, str) else item for item in value]
    return value


def _valid_utf8(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key, value in event.items():
        event[key] = _utf8(value)
    return event


def _worker_field(worker: int | str) -> Any:
    def add(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        event["worker"] = worker
        return event

    return add


def _deep_utf8(value: Any) -> Any:
    """_utf8 at every depth, keys as strings: for the rare line orjson refused, so that
    a peer's bytes in an error's message cannot make the line itself fail."""
    if isinstance(value, dict):
        return {_text(str(key)): _deep_utf8(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_deep_utf8(item) for item in value]
    return _text(value) if isinstance(value, str) else value


# structlog's add_log_level: the level a logging method writes under.
_LEVEL_NAMES = {"warn": "warning", "exception": "error"}


def _json_line(worker: int | str | None) -> Callable[[WrappedLogger, str, EventDict], bytes]:
    """The daemon's whole chain in one step: the bound fields merged, then level, worker
    and time added, _tidy, dict_tracebacks (only for a line with exc_info), _valid_utf8
    and orjson, as the console chain does them one processor at a time. A call line went
    through seven processors, three dict copies and a walk of the task's whole context."""

    def render(logger: WrappedLogger, method_name: str, event: EventDict) -> bytes:
        line: EventDict = {
            "timestamp": datetime.now(tz=UTC).isoformat().replace("+00:00", "Z"),
            "level": _LEVEL_NAMES.get(method_name, method_name),
        }
        if "event" in event:
            line["event"] = _utf8(event["event"])
        for key, value in event.items():
            if value is not None and key not in line:
                line[key] = _utf8(value)
        for key, value in _bound.get().items():
            if value is not None and key not in line and key not in event:
                line[key] = _utf8(value)
        if worker is not None:
            line["worker"] = worker
        if "exc_info" in line:
            line = dict_tracebacks(logger, method_name, line)
        try:
            return orjson.dumps(line, default=str)
        except TypeError:  # not UTF-8 deeper down (an exception's message), or a key
            return orjson.dumps(_deep_utf8(line), default=str)

    return render


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
    processors: list[Processor]
    factory: Any
    if fmt == "console":
        processors = [
            _merge_bound,
            structlog.processors.add_log_level,
            *([_worker_field(worker)] if worker is not None else []),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _tidy,
            _valid_utf8,
            structlog.dev.ConsoleRenderer(colors=stream.isatty()),
        ]
        factory = structlog.WriteLoggerFactory(file=stream)
    else:
        render = _json_line(worker)
        binary = getattr(stream, "buffer", None)
        if binary is not None:
            processors = [render]
            factory = structlog.BytesLoggerFactory(file=binary)
        else:  # a text-only stream (tests): same JSON, as text

            def render_text(logger: WrappedLogger, method_name: str, event: EventDict) -> str:
                return render(logger, method_name, event).decode()

            processors = [render_text]
            factory = structlog.WriteLoggerFactory(file=stream)
    _threshold = _LEVELS[level]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_threshold),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
