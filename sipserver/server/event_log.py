"""The one place where the core's events become log lines: the event's name, its level
and its fields; a certificate field becomes that certificate's issuer, serial and
thumbprints under the field's name."""

from __future__ import annotations

import contextvars
from typing import Any

import structlog

from sipserver.log import connection_remote, enabled
from sipserver.pki.certinfo import CertInfo
from sipserver.proxy.events import (
    Answered,
    CallRefused,
    Event,
    MessageMalformed,
    UnknownSourceRefused,
)
from sipserver.server.repeats import RepeatFilter

log = structlog.get_logger("sipserver")


# Events that a source can repeat without end: summarised per address and kind of reason.
# Our refusals of an allow-listed peer's requests too (a gateway running a scanner), but
# not the call lines of calls that were routed and failed.
REPEATABLE = (MessageMalformed, UnknownSourceRefused)
REPEATABLE_ANSWERS = (Answered, CallRefused)


def _repeatable(event: Event) -> bool:
    if isinstance(event, REPEATABLE):
        return True
    return isinstance(event, Answered) and type(event) in REPEATABLE_ANSWERS and event.status >= 400


def log_event(
    event: Event, repeats: RepeatFilter | None = None, now: float = 0.0, interval: float = 0.0
) -> None:
    level = event.log_level
    if not enabled(level):
        return
    if repeats is not None and _repeatable(event):
        said = event.fields()
        if not repeats.first(event.log_name, said["remote"], said["reason"], now, interval):
            return
    fields: dict[str, Any] = {}
    for key, value in event.fields().items():
        if isinstance(value, CertInfo):
            fields.update(value.log_fields(f"{key}_"))
        else:
            fields[key] = value
    write = getattr(log, level)
    remote, ours = fields.get("remote"), connection_remote()
    if remote is not None and ours is not None and ours != remote:
        # The event is about another connection than the one whose task logs it (a call
        # line written when the target's answer arrives): none of this task's connection,
        # peer or certificate fields belong on it, so it is written from an empty context.
        contextvars.Context().run(write, event.log_name, **fields)
    else:
        write(event.log_name, **fields)
