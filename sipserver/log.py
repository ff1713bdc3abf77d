"""structlog set-up: JSON lines for daemons and pipes, readable console output on a TTY."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _tidy(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Time, level and event first so lines scan well; absent facts left out, not null."""
    head = {key: event[key] for key in ("timestamp", "level", "event") if key in event}
    rest = {key: value for key, value in event.items() if key not in head and value is not None}
    return head | rest


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
        exc: list[Any] = []
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
        exc = [structlog.processors.dict_tracebacks]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _tidy,
            *exc,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
