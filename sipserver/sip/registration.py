"""What a REGISTER asks for (RFC 3261 §10.2, RFC 5626 §4.2), read from the request: the
number (the To URI's user part), the contacts with their expiry and outbound instance,
and whether the client speaks outbound. A malformed REGISTER raises RemoteProtocolError
(400 with the reason)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sipserver.sip.errors import RemoteProtocolError
from sipserver.sip.headers import split_list, unquote
from sipserver.sip.message import Request
from sipserver.sip.numbers import ascii_int
from sipserver.sip.uri import UriError, parse_name_addr, parse_uri

MAX_REG_ID: Final = 2**31 - 1


@dataclass(frozen=True, slots=True)
class ContactRequest:
    uri: str  # the Contact URI, where calls for the number are addressed
    expires: int | None  # its own expires parameter
    instance: str | None  # +sip.instance, unquoted (RFC 5626 §4.1)
    reg_id: int | None  # reg-id (RFC 5626 §4.2)


@dataclass(frozen=True, slots=True)
class Registration:
    number: str  # the To URI's user part: the AOR is sip:<number>@<our domain>
    domain: str  # the To URI's host
    wildcard: bool  # Contact: * (remove every binding; only with Expires: 0)
    contacts: tuple[ContactRequest, ...]
    expires: int | None  # the Expires header
    outbound: bool  # Supported: outbound
    via_count: int  # more than one Via: the REGISTER came through another proxy


def read_registration(request: Request) -> Registration:
    to = request.to
    if to is None:
        raise RemoteProtocolError("Missing To")
    try:
        to_uri = to.uri
    except UriError as exc:
        raise RemoteProtocolError("Malformed To") from exc
    if not to_uri.user:
        raise RemoteProtocolError("REGISTER To names no number (sip:<number>@<domain>)")
    expires = _seconds(request.headers.get("Expires"), "Expires header")
    values = [v for value in request.headers.get_all("Contact") for v in split_list(value)]
    wildcard = any(v.strip() == "*" for v in values)
    if wildcard and (len(values) != 1 or expires != 0):
        raise RemoteProtocolError("Contact: * must stand alone and come with Expires: 0")
    contacts = () if wildcard else tuple(_contact(value) for value in values)
    supported = {
        tag.strip().lower()
        for value in request.headers.get_all("Supported")
        for tag in value.split(",")
    }
    return Registration(
        number=to_uri.user_unescaped or "",
        domain=to_uri.host,
        wildcard=wildcard,
        contacts=contacts,
        expires=expires,
        outbound="outbound" in supported,
        via_count=len(request.vias),
    )


def _contact(value: str) -> ContactRequest:
    try:
        name_addr = parse_name_addr(value)
        if name_addr.uri_text.partition(":")[0].lower() not in ("sip", "sips"):
            raise RemoteProtocolError(f"Contact {name_addr.uri_text!r} is not a sip: or sips: URI")
        parse_uri(name_addr.uri_text)
    except UriError as exc:
        raise RemoteProtocolError(f"Malformed Contact {value!r}") from exc
    params = name_addr.params
    instance = params.get("+sip.instance")
    reg_id = params.get("reg-id")
    flow_number = ascii_int(reg_id, 10) if reg_id is not None else None
    if reg_id is not None and not (flow_number is not None and 1 <= flow_number <= MAX_REG_ID):
        raise RemoteProtocolError(f"Malformed reg-id {reg_id[:20]!r} (1 to {MAX_REG_ID})")
    if reg_id is not None and instance is None:
        raise RemoteProtocolError("reg-id without +sip.instance (RFC 5626 §4.2)")
    return ContactRequest(
        uri=name_addr.uri_text,
        expires=_seconds(params.get("expires"), "Contact expires parameter"),
        instance=unquote(instance) if instance else None,
        reg_id=flow_number,
    )


def _seconds(value: str | None, what: str) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # a long one is read as "as long as allowed"
        return MAX_REG_ID if len(value) > 10 else min(int(value), MAX_REG_ID)
    raise RemoteProtocolError(f"Malformed {what} {value[:20]!r} (seconds, ASCII digits)")
