"""Numbers as SIP writes them: RFC 3261's DIGIT is ASCII 0-9 only. Python's str.isdigit()
and int() also take '²', '٣' and friends (and int() fails on some of them), so every
number a peer sends is read here, with a bound on its length."""

from __future__ import annotations

from typing import Final

from sipserver.sip.memo import Memo


def ascii_int(text: str | bytes, max_digits: int = 10) -> int | None:
    """The value of 1 to `max_digits` ASCII digits; None for anything else (signs, spaces,
    other scripts' digits, too many digits)."""
    if len(text) > max_digits:
        return None
    return _VALUES.get(text)


def _digits_value(text: str | bytes) -> int | None:
    if not text or not text.isascii() or not text.isdigit():
        return None
    return int(text)


# The numbers a call's messages carry (lengths, sequence numbers, ports, hop counts) repeat:
# their values are remembered, since isascii(), isdigit() and int() are generic calls from
# compiled code (about 1,600 instructions a number, 29 numbers a call).
_VALUES: Final[Memo[str | bytes, int | None]] = Memo(_digits_value, 1024)
