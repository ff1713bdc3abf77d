"""Numbers as SIP writes them: RFC 3261's DIGIT is ASCII 0-9 only. Python's str.isdigit()
and int() also take '²', '٣' and friends (and int() fails on some of them), so every
number a peer sends is read here, with a bound on its length."""

from __future__ import annotations


def ascii_int(text: str | bytes, max_digits: int = 10) -> int | None:
    """The value of 1 to `max_digits` ASCII digits; None for anything else (signs, spaces,
    other scripts' digits, too many digits)."""
    if not text or len(text) > max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)
