"""Refusal storms summarised. The first refusal of a kind from a source is logged; the
same kind of refusal from the same address within log.repeat_interval is only counted,
and each interval the counts come out as one `refusals_repeated` line. A scanner
hammering the port, or an allow-listed gateway running one, costs a few lines a minute,
not megabytes.

The kind is the reason with what the sender chose taken out (quoted text, numbers): a
flood whose every message carries a different bad line or number is still one kind."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import structlog

log = structlog.get_logger("sipserver")
MAX_KEYS = 10000  # sources are unbounded: past this many, counting starts over
MAX_KIND = 120  # characters of a reason that make its kind
_SENDERS_TEXT = re.compile(r"'[^']*'?|\"[^\"]*\"?|<[^>]*>?|\d+")


@dataclass(slots=True)
class _Window:
    started: float
    repeated: int = 0


class RepeatFilter:
    def __init__(self) -> None:
        self._windows: dict[tuple[str, str, str], _Window] = {}

    def first(self, event: str, source: str, reason: str, now: float, interval: float) -> bool:
        """True when this refusal should be logged; False when it is only counted."""
        if interval <= 0:
            return True
        key = (event, _host(source), reason_kind(reason))
        window = self._windows.get(key)
        if window is None or (now - window.started >= interval and not window.repeated):
            if len(self._windows) >= MAX_KEYS:
                self.flush(now, 0.0)
                self._windows.clear()
            self._windows[key] = _Window(now)
            return True
        window.repeated += 1
        return False

    def flush(self, now: float, interval: float) -> None:
        """Log the counts of every window older than `interval`, and forget them."""
        for key, window in list(self._windows.items()):
            if now - window.started < interval:
                continue
            if window.repeated:
                event, source, reason = key
                log.warning(
                    "refusals_repeated",
                    refusal=event,
                    source=source,
                    reason=reason,
                    count=window.repeated,
                    seconds=round(now - window.started, 1),
                )
            del self._windows[key]


@functools.lru_cache(maxsize=1024)
def reason_kind(reason: str) -> str:
    """`Malformed header line 'bad-line-7'` -> `Malformed header line '…'`; `No dial plan
    for 5551234` -> `No dial plan for N`."""
    kind = _SENDERS_TEXT.sub(_placeholder, reason[: MAX_KIND * 4])
    return kind[:MAX_KIND]


def _placeholder(found: re.Match[str]) -> str:
    text = found.group()
    return "N" if text[0].isdigit() else f"{text[0]}…{_CLOSING.get(text[0], '')}"


_CLOSING = {"'": "'", '"': '"', "<": ">"}


def _host(remote: str) -> str:
    """The address of `host:port` or `[v6]:port`: a source is an address, not a port."""
    if remote.startswith("["):
        return remote[1 : remote.find("]")]
    return remote.rpartition(":")[0] or remote
