"""When to warn about certificate expiry, as Exchange UM does: from 30 days before
not_after a warning once a day with the days left; after expiry an error once a day."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

WARN_DAYS = 30


@dataclass(frozen=True, slots=True)
class ExpiryNotice:
    expired: bool
    days: int  # days left (expiring) or days since (expired), whole days rounded up/down

    @property
    def level(self) -> str:
        return "error" if self.expired else "warning"


def expiry_notice(
    not_after: dt.datetime, now: dt.datetime, warn_days: int = WARN_DAYS
) -> ExpiryNotice | None:
    left = (not_after - now).total_seconds() / 86400
    if left <= 0:
        return ExpiryNotice(True, math.floor(-left))
    if left <= warn_days:
        return ExpiryNotice(False, math.ceil(left))
    return None


class DailyOnce:
    """Lets each key through once per UTC calendar day."""

    def __init__(self) -> None:
        self._last: dict[str, dt.date] = {}

    def due(self, key: str, now: dt.datetime) -> bool:
        today = now.astimezone(dt.UTC).date()
        if self._last.get(key) == today:
            return False
        self._last[key] = today
        return True
