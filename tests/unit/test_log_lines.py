"""The daemon's JSON line, as its one-step renderer writes it: time, level and event first,
then the line's own fields, then the fields bound to the task's connection (in the order
they were bound), then the worker; absent facts left out; every string valid UTF-8; an
exception as structured frames. The console chain, one processor at a time, says the same."""

from __future__ import annotations

import contextvars
import io
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from sipserver.log import bind_connection, clear_connection, configure_logging


@pytest.fixture
def written() -> Iterator[Callable[..., list[str]]]:
    """The lines a function writes through a fresh logger, configured as asked."""
    before = structlog.get_config()

    def lines(
        run: Callable[[Any], None], fmt: str = "json", worker: int | None = None
    ) -> list[str]:
        out = io.StringIO()
        configure_logging("debug", fmt, stream=out, worker=worker)
        contextvars.Context().run(run, structlog.get_logger("sipserver"))
        return out.getvalue().splitlines()

    yield lines
    structlog.configure(**before)


def test_a_line_puts_its_own_fields_before_the_bound_ones_in_binding_order(
    written: Callable[..., list[str]],
) -> None:
    def run(log: Any) -> None:
        bind_connection(transport="tls", remote="192.0.2.1:5061", connection_id=7)
        bind_connection(peer="pbx1")
        log.info("call_completed", call_id="c1", status=200)

    (line,) = written(run, worker=2)
    fields = json.loads(line)
    assert list(fields) == [
        "timestamp",
        "level",
        "event",
        "call_id",
        "status",
        "transport",
        "remote",
        "connection_id",
        "peer",
        "worker",
    ]
    assert fields["level"] == "info" and fields["event"] == "call_completed"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", fields["timestamp"])


def test_a_field_the_line_leaves_empty_is_not_filled_from_the_bound_ones(
    written: Callable[..., list[str]],
) -> None:
    def run(log: Any) -> None:
        bind_connection(remote="192.0.2.1:5061", peer="gw1", cert_serial=None)
        log.warning("request_refused", peer=None, level="bogus", timestamp="then")

    (line,) = written(run)
    fields = json.loads(line)
    assert "peer" not in fields and "cert_serial" not in fields  # absent, not the bound gw1
    assert fields["level"] == "warning" and fields["timestamp"] != "then"
    assert fields["remote"] == "192.0.2.1:5061"


def test_strings_that_are_not_utf8_are_written_escaped_in_lists_too(
    written: Callable[..., list[str]],
) -> None:
    def run(log: Any) -> None:
        bind_connection(user_agent="phone\udcff")
        log.info("odd\udcfe", values=["a\udcfd", 3], count=1)

    (line,) = written(run)
    fields = json.loads(line)
    assert fields["event"] == "odd\\xfe"
    assert fields["values"] == ["a\\xfd", 3]
    assert fields["user_agent"] == "phone\\xff"


def test_an_exception_is_written_as_frames(written: Callable[..., list[str]]) -> None:
    def run(log: Any) -> None:
        try:
            raise ValueError("bad\udcff value")
        except ValueError:
            log.exception("internal_error")

    (line,) = written(run)
    fields = json.loads(line)
    assert fields["level"] == "error" and "exc_info" not in fields
    (exception,) = fields["exception"]
    assert exception["exc_type"] == "ValueError"
    assert exception["exc_value"] == "bad\\xff value"


def test_a_cleared_task_writes_no_bound_field_and_the_console_agrees(
    written: Callable[..., list[str]],
) -> None:
    def run(log: Any) -> None:
        bind_connection(remote="192.0.2.1:5061", peer="gw1")
        log.info("bound_line")
        clear_connection()
        log.info("cleared_line")

    first, second = (json.loads(line) for line in written(run))
    assert first["peer"] == "gw1" and "peer" not in second and "remote" not in second
    console = written(run, fmt="console")
    assert "peer=gw1" in console[0] and "remote=192.0.2.1:5061" in console[0]
    assert "peer=" not in console[1] and "cleared_line" in console[1]


def test_a_line_with_bytes_that_are_not_utf8_deep_inside_is_still_written(
    written: Callable[..., list[str]],
) -> None:
    def run(log: Any) -> None:
        log.info("nested", detail={"reason": "bad\udcff", 7: ["x\udcfe"]})

    (line,) = written(run)
    assert json.loads(line)["detail"] == {"reason": "bad\\xff", "7": ["x\\xfe"]}
