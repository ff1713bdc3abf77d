"""The classes whose __init__ is written out by hand (the generated one stays interpreted
in the compiled core): each must still set every field, or a field added later would be
missing on every instance until something read it."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from sipserver.proxy.calls import ClientContext
from sipserver.proxy.live_transactions import ServerContext
from sipserver.sip.flow import Flow, Transmit, Transport
from sipserver.sip.message import Headers, Request, Response
from sipserver.sip.transaction_machine import (
    ClientTransaction,
    ResponseReceived,
    SendMessage,
    ServerTransaction,
)
from sipserver.sip.via import Via

WRITTEN_OUT = [
    Via,
    Flow,
    Transmit,
    SendMessage,
    ResponseReceived,
    Request,
    Response,
    ServerTransaction,
    ClientTransaction,
    ClientContext,
    ServerContext,
]


def _required_arguments(cls: type) -> dict[str, Any]:
    """A stand-in for each parameter without a default (the fields' values do not matter)."""
    parameters = inspect.signature(cls).parameters.values()
    return {p.name: object() for p in parameters if p.default is inspect.Parameter.empty}


@pytest.mark.parametrize("cls", WRITTEN_OUT, ids=lambda cls: cls.__name__)
def test_the_written_out_init_sets_every_field(cls: type) -> None:
    instance = cls(**_required_arguments(cls))
    unset = [f.name for f in dataclasses.fields(cls) if not hasattr(instance, f.name)]
    assert unset == []


@pytest.mark.parametrize("cls", WRITTEN_OUT, ids=lambda cls: cls.__name__)
def test_replace_still_works(cls: type) -> None:
    """dataclasses.replace passes every field by name to __init__: each field that __init__
    takes must be a parameter of the same name."""
    instance = cls(**_required_arguments(cls))
    parameters = inspect.signature(cls).parameters
    for f in dataclasses.fields(cls):
        if f.name in parameters:
            assert getattr(dataclasses.replace(instance), f.name) == getattr(instance, f.name)


def test_value_classes_compare_and_hash_by_value() -> None:
    flow = Flow(Transport.TLS, ("127.0.0.1", 5061), ("127.0.0.1", 40000), connection_id=1)
    same = Flow(Transport.TLS, ("127.0.0.1", 5061), ("127.0.0.1", 40000), connection_id=1)
    assert flow == same and hash(flow) == hash(same)
    assert {flow: 1}[same] == 1
    assert flow != dataclasses.replace(flow, connection_id=2)
    assert Via("TLS", "h", 5061, {"branch": "z9hG4bK1"}).branch == "z9hG4bK1"
    assert Via("UDP", "h").params == {}
    assert Request(Headers([]), method="BYE").uri == ""
