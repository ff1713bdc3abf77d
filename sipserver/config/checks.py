"""The checks of configuration values: each returns the problem, or None when the value
is fine. Pure."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

Check = Callable[[Any], str | None]  # returns the problem, or None when the value is fine

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_NUMBER_PATTERN = re.compile(r"^\+?[0-9xX]*\*?$")
_NUMBER = re.compile(r"^\+?[0-9]+$")


def is_fqdn(name: str) -> bool:
    name = name.rstrip(".")
    if not name or len(name) > 253 or is_ip(name):
        return False
    return all(_LABEL.match(label) for label in name.split("."))


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def fqdn(value: str) -> str | None:
    return None if is_fqdn(value) else f"{value!r} is not a valid FQDN"


def store_url(value: str) -> str | None:
    """redis://HOST[:PORT][/DB] (Redis or Valkey)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not one
    except ValueError as exc:
        return f"{value!r} is not a store URL ({exc})"
    if parts.scheme != "redis" or not parts.hostname:
        return f"{value!r} is not a store URL: redis://HOST:PORT/DB (Redis or Valkey)"
    db = parts.path.strip("/") or "0"
    if not (db.isascii() and db.isdigit()):
        return f"the database in {value!r} must be a number"
    return None


def port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else f"{value} is not a port (0-65535; 0 picks a free port)"


def send_port(value: int) -> str | None:
    return None if 0 < value < 65536 else f"{value} is not a port"


def positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def not_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def off_or_seconds(value: float) -> str | None:
    return None if value >= 0 else "must be 0 (off) or more seconds"


def at_least(n: int) -> Check:
    return lambda value: None if value >= n else f"must be at least {n}"


def not_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def ip_address(value: str) -> str | None:
    return None if is_ip(value) else f"{value!r} is not an IP address"


def ip_addresses(values: tuple[str, ...]) -> str | None:
    bad = next((v for v in values if not is_ip(v)), None)
    if bad is not None:
        return f"{bad!r} is not an IP address"
    return None if values else "must list at least one address"


def some(values: tuple[Any, ...]) -> str | None:
    return None if values else "must list at least one"


def fqdn_or_ip(value: str) -> str | None:
    return (
        None
        if is_fqdn(value) or is_ip(value)
        else f"{value!r} is neither an FQDN nor an IP address"
    )


def ip_and_port(value: str) -> str | None:
    host, sep, port_text = value.rpartition(":")
    if not is_ip(host.strip("[]")):
        return f"{value!r} is not IP:PORT (e.g. 127.0.0.1:9060)"
    ok = sep and port_text.isdigit() and 0 <= int(port_text) < 65536
    return None if ok else f"{value!r} has no valid port"


def hep_address(value: str) -> str | None:
    transport, _, address = value.partition(":")
    if transport not in ("udp", "tcp") or ip_and_port(address) is not None:
        return f"{value!r} is not udp:IP:PORT or tcp:IP:PORT (e.g. udp:127.0.0.1:9060)"
    return None


def methods(values: tuple[str, ...]) -> str | None:
    bad = next((v for v in values if not re.match(r"^[A-Z]+$", v)), None)
    return None if bad is None else f"{bad!r} is not a SIP method in capitals (e.g. INVITE)"


def env_name(value: str) -> str | None:
    ok = re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value)
    return None if ok else f"{value!r} is not an environment variable name"


def header_name(value: str) -> str | None:
    return None if re.match(r"^[A-Za-z0-9-]+$", value) else f"{value!r} is not a header name"


def number_patterns(values: tuple[str, ...]) -> str | None:
    for value in values:
        if not value or value == "+" or not _NUMBER_PATTERN.match(value):
            return (
                f"{value!r} is not a number pattern (digits with an optional leading +, "
                "x for one digit, a trailing * for any rest)"
            )
    return None if values else "must list at least one number pattern"


def deny_patterns(values: tuple[str, ...]) -> str | None:
    """Number patterns to refuse; one that starts with "!" is an exception to them."""
    for value in values:
        pattern = value[1:] if value.startswith("!") else value
        if not pattern or pattern == "+" or not _NUMBER_PATTERN.match(pattern):
            return (
                f"{value!r} is not a number pattern (digits with an optional leading +, "
                'x for one digit, a trailing * for any rest; "!" before it: an exception)'
            )
    if values and all(v.startswith("!") for v in values):
        return "lists only exceptions: name the numbers to deny too"
    return None


def numbers(values: tuple[str, ...]) -> str | None:
    bad = next((v for v in values if not _NUMBER.match(v)), None)
    if bad is not None:
        return f"{bad!r} is not a number (digits, with an optional leading +)"
    return None


def workers(value: int | str) -> str | None:
    if value == "auto" or (isinstance(value, int) and value >= 1):
        return None
    return f'{value!r} is not a number of workers (1 or more, or "auto": one per CPU)'


def nameservers(values: tuple[str, ...]) -> str | None:
    return next((problem for v in values if (problem := ip_and_port(v)) is not None), None)
