"""SIP and SIPS URIs (RFC 3261 §19.1), including escapes and IPv6 references."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote as percent_decode

from sipserver.sip.errors import RemoteProtocolError
from sipserver.sip.headers import Params, format_params, parse_params
from sipserver.sip.memo import Memo

_HOST_RE: Final = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?::([0-9]{1,5}))?$")
SIP_SCHEMES: Final = ("sip", "sips")


# Immutable through Final fields, with __init__ written out, as Via: a generated one stays
# interpreted in the compiled core, and frozen=True sets each field through
# object.__setattr__ (a call's unique From and To tags make new ones on every call).
@dataclass(slots=True, unsafe_hash=True, init=False)
class SipUri:
    scheme: Final[str]
    host: Final[str]  # IPv6 without brackets, lower-cased
    user: Final[str | None]  # as written (escapes kept) so that serialising is lossless
    password: Final[str | None]
    port: Final[int | None]
    params: Final[Params]
    headers: Final[str | None]

    def __init__(
        self,
        scheme: str,
        host: str,
        user: str | None = None,
        password: str | None = None,
        port: int | None = None,
        params: Params | None = None,
        headers: str | None = None,
    ) -> None:
        self.scheme = scheme
        self.host = host
        self.user = user
        self.password = password
        self.port = port
        self.params = {} if params is None else params
        self.headers = headers

    @property
    def user_unescaped(self) -> str | None:
        user = self.user
        if user is None or "%" not in user:  # the usual number: no call into urllib
            return user
        return percent_decode(user)

    @property
    def host_is_ipv6(self) -> bool:
        return ":" in self.host

    @property
    def host_reference(self) -> str:
        """Host as it appears in a URI or Via: IPv6 addresses in brackets."""
        return f"[{self.host}]" if self.host_is_ipv6 else self.host

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.extend([":", self.password])
            out.append("@")
        out.append(self.host_reference)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(format_params(self.params))
        if self.headers is not None:
            out.extend(["?", self.headers])
        return "".join(out)


class UriError(RemoteProtocolError, ValueError):
    """A SIP URI or host that cannot be read."""


def parse_host_port(text: str) -> tuple[str, int | None]:
    """host[:port], the host lower-cased (IPv6 without brackets). Raises UriError."""
    return _HOST_PORTS.get(text)


def _parse_host_port(text: str) -> tuple[str, int | None]:
    match = _HOST_RE.match(text.strip())
    if not match:
        raise UriError(f"bad host {text!r}")
    host, port_text = match.group(1), match.group(2)
    if host.startswith("["):
        host = host[1:-1]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError as exc:
            raise UriError(f"bad IPv6 reference {text!r}") from exc
    port = int(port_text) if port_text else None
    if port is not None and not 0 < port < 65536:
        raise UriError(f"port out of range in {text!r}")
    return host.lower(), port


def parse_uri(text: str) -> SipUri:
    """Parse a sip: or sips: URI. Raises UriError for other schemes or bad syntax."""
    return _URIS.get(text)


def _parse_uri(text: str) -> SipUri:
    text = text.strip()
    scheme, sep, rest = text.partition(":")
    if not sep or not scheme:
        raise UriError(f"no scheme in URI {text!r}")
    scheme = scheme.lower()
    if scheme not in SIP_SCHEMES:
        raise UriError(f"unsupported URI scheme {scheme!r}")
    user = password = None
    # The first "@" ends the userinfo: user parts may hold ";" and "?" (§25.1
    # user-unreserved), but "@" appears nowhere after it except escaped.
    if "@" in rest:
        userinfo, _, rest = rest.partition("@")
        user, colon, pw = userinfo.partition(":")
        password = pw if colon else None
        if not user:
            raise UriError(f"empty user part in {text!r}")
    rest, qmark, headers = rest.partition("?")
    hostport, _, param_text = rest.partition(";")
    host, port = parse_host_port(hostport)
    try:
        params = parse_params(param_text)
    except ValueError as exc:
        raise UriError(f"bad URI parameters in {text!r}: {exc}") from exc
    return SipUri(scheme, host, user, password, port, params, headers if qmark else None)


@dataclass(slots=True, unsafe_hash=True, init=False)
class NameAddr:
    """The value of From, To, Contact, Route, Record-Route: `"name" <uri>;params`.
    Immutable through Final fields, as SipUri."""

    uri_text: Final[str]
    display_name: Final[str | None]
    params: Final[Params]
    bracketed: Final[bool]

    def __init__(
        self,
        uri_text: str,
        display_name: str | None = None,
        params: Params | None = None,
        bracketed: bool = True,
    ) -> None:
        self.uri_text = uri_text
        self.display_name = display_name
        self.params = {} if params is None else params
        self.bracketed = bracketed

    @property
    def uri(self) -> SipUri:
        return parse_uri(self.uri_text)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_param(self, name: str, value: str | None) -> NameAddr:
        params = dict(self.params)
        params[name] = value
        return NameAddr(self.uri_text, self.display_name, params, self.bracketed)

    def __str__(self) -> str:
        display = f"{self.display_name} " if self.display_name else ""
        if self.bracketed or display:
            return f"{display}<{self.uri_text}>{format_params(self.params)}"
        return f"{self.uri_text}{format_params(self.params)}"


def _angle_outside_quotes(text: str) -> int | None:
    in_quotes = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif in_quotes and char == "\\":
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif char == "<" and not in_quotes:
            return index
    return None


def parse_name_addr(text: str) -> NameAddr:
    return _NAME_ADDRS.get(text)


def _parse_name_addr(text: str) -> NameAddr:
    text = text.strip()
    open_at = _angle_outside_quotes(text)
    if open_at is not None:
        display, rest = text[:open_at], text[open_at + 1 :]
        uri_text, close, param_text = rest.partition(">")
        if not close:
            raise UriError(f"unterminated <...> in {text!r}")
        if display.count('"') % 2:
            raise UriError(f"unterminated quoted display name in {text!r}")
        try:
            params = parse_params(param_text)
        except ValueError as exc:
            raise UriError(f"bad parameters in {text!r}: {exc}") from exc
        return NameAddr(uri_text.strip(), display.strip() or None, params, True)
    # addr-spec form: parameters after the URI belong to the header (RFC 3261 §20.10).
    uri_text, _, param_text = text.partition(";")
    if not uri_text or ":" not in uri_text:
        raise UriError(f"no URI in {text!r}")
    try:
        params = parse_params(param_text)
    except ValueError as exc:
        raise UriError(f"bad parameters in {text!r}: {exc}") from exc
    return NameAddr(uri_text.strip(), None, params, False)


# Results are immutable: each text is parsed once.
_HOST_PORTS: Final = Memo(_parse_host_port, 4096)
_URIS: Final = Memo(_parse_uri, 4096)
_NAME_ADDRS: Final = Memo(_parse_name_addr, 4096)
