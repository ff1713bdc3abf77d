"""Header names, compact forms, comma-separated lists and parameters (RFC 3261 §7.3, §25)."""

from __future__ import annotations

import re
from typing import Final

from sipserver.sip.memo import Memo

# RFC 3261 §7.3.3 and later RFCs' compact forms.
COMPACT_FORMS: Final[dict[str, str]] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_CANONICAL: Final[dict[str, str]] = {
    name.lower(): name
    for name in (
        "Accept",
        "Accept-Contact",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Authentication-Info",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Error-Info",
        "Event",
        "Expires",
        "From",
        "Identity",
        "In-Reply-To",
        "Max-Forwards",
        "Min-Expires",
        "MIME-Version",
        "Organization",
        "Path",
        "Priority",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Reject-Contact",
        "Reply-To",
        "Request-Disposition",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "RAck",
        "Server",
        "Session-Expires",
        "Subject",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
    )
}

# Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1). Others, such as
# WWW-Authenticate or Date, contain commas that are not separators.
LIST_HEADERS: Final = frozenset(
    key.lower()
    for key in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Call-Info",
        "Contact",
        "Content-Encoding",
        "Content-Language",
        "Error-Info",
        "In-Reply-To",
        "Path",
        "Proxy-Require",
        "Record-Route",
        "Require",
        "Route",
        "Supported",
        "Unsupported",
        "Via",
        "Warning",
    )
)

TOKEN_RE: Final = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")


def header_key(name: str) -> str:
    """The lower-case long form of a header name, used for lookups."""
    return _KEYS.get(name)


def _key_of(name: str) -> str:
    lowered = name.strip().lower()
    if len(lowered) == 1 and lowered in COMPACT_FORMS:
        return COMPACT_FORMS[lowered].lower()
    return lowered


# Every header lookup starts here: remembered in a Memo, not functools.lru_cache (see memo).
_KEYS: Final = Memo(_key_of, 1024)


def canonical_name(name: str) -> str:
    """The conventional spelling of a header name (compact forms expanded)."""
    key = header_key(name)
    return _CANONICAL.get(key, name.strip())


def split_list(value: str) -> list[str]:
    """Split a header value at commas that are outside quotes and angle brackets."""
    parts, _ = _split_outside(value, ",")
    return [part.strip() for part in parts if part.strip()]


def _split_list_tuple(value: str) -> tuple[str, ...]:
    return tuple(split_list(value))


_SPLIT_LISTS: Final = Memo(_split_list_tuple, 4096)


def split_list_cached(value: str) -> list[str]:
    """split_list, remembering recent values (a Via or Route set is split many times)."""
    return list(_SPLIT_LISTS.get(value))


def split_outside_quotes(value: str, separator: str) -> list[str]:
    """Split at a separator character that is outside quoted strings and <...>.
    Raises ValueError for an unterminated quoted string."""
    parts, quotes_closed = _split_outside(value, separator)
    if not quotes_closed:
        raise ValueError("unterminated quoted string")
    return parts


def _split_outside(value: str, separator: str) -> tuple[list[str], bool]:
    if '"' not in value and "<" not in value:
        return value.split(separator), True
    parts: list[str] = []
    current: list[str] = []
    in_quotes = in_angle = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif in_quotes and char == "\\":
            escaped = True
        elif char == '"' and not in_angle:
            in_quotes = not in_quotes
        elif char == "<" and not in_quotes:
            in_angle = True
        elif char == ">" and not in_quotes:
            in_angle = False
        elif char == separator and not in_quotes and not in_angle:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts, not in_quotes


Params = dict[str, str | None]


def parse_params(text: str) -> Params:
    """Parse `;name=value;flag` (the leading `;` optional). Names are lower-cased."""
    params: Params = {}
    for chunk in split_outside_quotes(text, ";"):
        chunk = chunk.strip()
        if not chunk:
            continue
        name, sep, raw_value = chunk.partition("=")
        name = name.strip()
        if not is_token(name):
            raise ValueError(f"bad parameter name {name!r}")
        params[name.lower()] = raw_value.strip() if sep else None
    return params


def is_token(text: str) -> bool:
    """Whether a header name, parameter name or method follows the token rule. A few dozen are
    nearly all there are, so the ones that pass are remembered: a set lookup costs a tenth
    of the regex match."""
    if text in _TOKENS:
        return True
    if not TOKEN_RE.match(text):
        return False
    if len(_TOKENS) < 1024:  # a flood of made-up names is checked each time, not kept
        _TOKENS.add(text)
    return True


_TOKENS: Final[set[str]] = set()


def format_params(params: Params) -> str:
    return "".join(
        f";{name}" if value is None else f";{name}={value}" for name, value in params.items()
    )


def unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
