"""Which dial plan a call belongs to: the calling peer (hunt group) and the number."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from sipserver.config.schema import DialPlanSettings
from sipserver.sip.memo import Memo

_VISUAL_SEPARATORS: Final = re.compile(r"[-.()\s]")  # RFC 3966 visual separators


def normalise_number(user: str) -> str:
    """The dialled number as dial plans compare it: visual separators removed."""
    return _VISUAL_SEPARATORS.sub("", user)


def _compile(pattern: str) -> re.Pattern[str]:
    return _PATTERNS.get(pattern)


def _compile_pattern(pattern: str) -> re.Pattern[str]:
    rest = pattern.endswith("*")
    body = pattern[:-1] if rest else pattern
    regex = "".join(r"\d" if c in "xX" else re.escape(c) for c in body)
    return re.compile(regex + (".*" if rest else "") + r"\Z")


_PATTERNS: Final = Memo(_compile_pattern, 4096)


def number_matches(pattern: str, number: str) -> bool:
    """Exact match, where `x` is one digit and a trailing `*` matches any rest."""
    return _compile(pattern).match(number) is not None


def denied_by(plan: DialPlanSettings, number: str) -> str | None:
    """The deny_numbers pattern that refuses this number in this plan, or None (no
    pattern matches, or an exception - "!pattern" - does)."""
    denied = None
    for pattern in plan.deny_numbers:
        if pattern.startswith("!"):
            if number_matches(pattern[1:], number):
                return None
        elif denied is None and number_matches(pattern, number):
            denied = pattern
    return denied


def find_dial_plan(
    plans: Sequence[DialPlanSettings], peer_name: str, number: str
) -> DialPlanSettings | None:
    """The first dial plan (config order) whose `from` lists the peer and whose numbers
    match."""
    for plan in plans:
        if peer_name in plan.from_peers and any(number_matches(p, number) for p in plan.numbers):
            return plan
    return None
