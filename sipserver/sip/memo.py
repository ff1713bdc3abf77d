"""Results of a pure parse remembered by its input text, for the compiled core.

functools.lru_cache is a wrapper that compiled code can only reach through a Python call,
and each hit moves the entry in a recency list. The core asks for ~100 parsed values per
call (Via, CSeq, From/To, lists), nearly all already seen, so a hit here is one direct
call and one dict read. When full the memo starts again empty: a flood of distinct texts
costs a parse each, as with any cache, and cannot grow it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

Result = TypeVar("Result")
# What a parse reads: text, or the bytes of a message head (a Content-Length).
Text = TypeVar("Text", bound=str | bytes)


class Memo(Generic[Text, Result]):
    __slots__ = ("_compute", "_limit", "_results")

    def __init__(self, compute: Callable[[Text], Result], limit: int) -> None:
        self._compute = compute
        self._limit = limit
        self._results: dict[Text, Result] = {}

    def get(self, text: Text) -> Result:
        """compute(text), computed once while it stays remembered. Exceptions are not
        remembered (a bad text raises each time), nor is a None result."""
        result = self._results.get(text)
        if result is not None:
            return result
        result = self._compute(text)
        self.remember(text, result)
        return result

    def remember(self, text: Text, result: Result) -> None:
        """Record what `text` parses to, for text made from `result` itself (so that
        parsing it back would give the same)."""
        if len(self._results) >= self._limit:
            self._results.clear()
        self._results[text] = result

    def __len__(self) -> int:
        return len(self._results)
