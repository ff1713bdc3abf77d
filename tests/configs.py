"""One builder for the TOML configurations tests use: peers and dial plans as keyword
arguments, so a test says only what differs from the defaults."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(value)


def table(name: str, values: Mapping[str, Any], *, array: bool = False) -> str:
    head = f"[[{name}]]" if array else f"[{name}]"
    body = "".join(f"{key} = {toml_value(v)}\n" for key, v in values.items() if v is not None)
    return f"{head}\n{body}"


def peer(
    name: str,
    *,
    kind: str = "pbx",
    addresses: Iterable[str] = ("127.0.0.1",),
    port: int | None = None,
    transport: str | None = None,
    health_check: float | None = 0,
    **more: Any,
) -> str:
    """A peer named `name` with FQDN `<name>.example.test`."""
    values = {
        "name": name,
        "fqdn": f"{name}.example.test",
        "kind": kind,
        "addresses": list(addresses),
        "port": port,
        "transport": transport,
        "health_check": health_check,
        **more,
    }
    return table("peer", values, array=True)


def dial_plan(
    name: str,
    security: str,
    targets: Iterable[str],
    *,
    numbers: Iterable[str] = ("5xxx",),
    from_: Iterable[str] = ("gw1",),
    action: str | None = None,
    **more: Any,
) -> str:
    values = {
        "name": name,
        "security": security,
        "numbers": list(numbers),
        "from": list(from_),
        "action": action,
        "targets": list(targets) or None,
        **more,
    }
    return table("dial_plan", values, array=True)


def answer_plan(
    security: str, *, name: str = "echo", numbers: Iterable[str] = ("5xxx",), **more: Any
) -> str:
    """A dial plan from gw1 that sipserver answers itself."""
    return dial_plan(name, security, [], numbers=numbers, action="answer", **more)


def one_target_plan(
    security: str,
    port: int,
    transport: str,
    *,
    name: str = "main",
    numbers: Iterable[str] = ("5xxx",),
) -> str:
    """A pbx1 target on 127.0.0.1:`port` and one dial plan from gw1 to it."""
    return peer("pbx1", port=port, transport=transport) + dial_plan(
        name, security, ["pbx1"], numbers=numbers
    )
