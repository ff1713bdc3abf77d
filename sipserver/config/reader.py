"""Reads one TOML table into one settings dataclass, driven by the dataclass's own fields
(type, default, check): nothing about a key is written twice. Errors name the key path and
the line, e.g. `peer[1].fqdn (line 23): "gw 1" is not a valid FQDN`."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

from sipserver.errors import ConfigError

KeyPath = tuple[str | int, ...]


class LineFinder:
    """Finds the line of a key path in TOML text (tomllib does not report positions)."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"]+)\s*\]\]?")

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines()

    def find(self, path: KeyPath) -> int | None:
        table: tuple[str, ...] = ()
        counts: dict[str, int] = {}
        index: int | None = None
        header_line: int | None = None
        target_table = tuple(str(p) for p in path[:-1] if isinstance(p, str))
        target_index = next((p for p in path if isinstance(p, int)), None)
        key = path[-1]
        for number, line in enumerate(self._lines, start=1):
            header = self._HEADER.match(line)
            if header:
                table = tuple(header.group(2).replace('"', "").split("."))
                if header.group(1) == "[[":
                    counts[table[0]] = counts.get(table[0], -1) + 1
                    index = counts[table[0]]
                else:
                    index = None
                if table == target_table and index == target_index:
                    header_line = number
                continue
            if (
                table == target_table
                and index == target_index
                and isinstance(key, str)
                and re.match(rf'^\s*"?{re.escape(key)}"?\s*=', line)
            ):
                return number
        return header_line


class Reader:
    """Turns TOML values into settings. Relative paths resolve against `base_dir` (the
    config file's folder), else against `state_dir`."""

    def __init__(self, text: str, source: str, base_dir: Path | None, state_dir: Path) -> None:
        self._finder = LineFinder(text)
        self._source = source
        self._base_dir = base_dir
        self._state_dir = state_dir

    def error(self, keypath: KeyPath, message: str) -> ConfigError:
        return ConfigError(message, format_key(keypath), self._finder.find(keypath), self._source)

    def table(self, data: Any, keypath: KeyPath, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.error(keypath, "must be a table")
        for key in data:
            if key not in allowed:
                raise self.error((*keypath, key), f"unknown key{_suggest(key, allowed)}")
        return data

    def section(
        self, cls: type[Any], data: Any, keypath: KeyPath, defaults: dict[str, Any] | None = None
    ) -> Any:
        """One table as `cls`. `defaults` supplies host-dependent defaults by field name."""
        fields = dataclasses.fields(cls)
        keys = {f.metadata.get("key") or f.name: f for f in fields}
        table = self.table(data, keypath, set(keys))
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for key, spec in keys.items():
            full = (*keypath, key)
            if key not in table:
                if defaults and spec.name in defaults:
                    values[spec.name] = defaults[spec.name]
                elif isinstance(spec.default, Path):
                    values[spec.name] = self._state_dir / spec.default
                elif (
                    spec.default is dataclasses.MISSING
                    and spec.default_factory is dataclasses.MISSING
                ):
                    raise self.error(full, "is required")
                continue
            value = self.value(table[key], hints[spec.name], full)
            check = spec.metadata.get("check")
            if check is not None and value is not None and (problem := check(value)):
                raise self.error(full, problem)
            values[spec.name] = value
        result = cls(**values)
        cross_check = getattr(result, "cross_check", None)
        if cross_check is not None and (problem := cross_check()) is not None:
            raise self.error((*keypath, problem[0]), problem[1])
        return result

    def value(self, raw: Any, kind: Any, keypath: KeyPath) -> Any:
        origin = typing.get_origin(kind)
        if origin in (types.UnionType, typing.Union):
            options = [k for k in typing.get_args(kind) if k is not type(None)]
            if len(options) == 1:
                return self.value(raw, options[0], keypath)
            if ipaddress.IPv4Network in options:
                return self._network(raw, keypath)
            if set(options) == {int, str}:  # a count, or a word like "auto"
                kind = int if isinstance(raw, int) and not isinstance(raw, bool) else str
                return self._scalar(raw, kind, keypath)
            raise TypeError(kind)
        if origin is tuple:
            if not isinstance(raw, list):
                raise self.error(keypath, f"must be a list, got {type(raw).__name__} {raw!r}")
            item = typing.get_args(kind)[0]
            return tuple(self.value(entry, item, keypath) for entry in raw)
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            choices = [m.value for m in kind]
            if raw not in choices:
                raise self.error(
                    keypath, f"must be one of {', '.join(map(str, choices))}, got {raw!r}"
                )
            return kind(raw)
        if kind is Path:
            return self._path(self._scalar(raw, str, keypath))
        if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        return self._scalar(raw, kind, keypath)

    def _scalar(self, raw: Any, kind: type, keypath: KeyPath) -> Any:
        if isinstance(raw, bool) and kind is not bool:
            raise self.error(keypath, f"must be {_kind_name(kind)}, not a boolean")
        if not isinstance(raw, kind):
            raise self.error(
                keypath, f"must be {_kind_name(kind)}, got {type(raw).__name__} {raw!r}"
            )
        return raw

    def _network(self, raw: Any, keypath: KeyPath) -> Any:
        text = self._scalar(raw, str, keypath)
        try:
            return ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise self.error(keypath, f"{text!r} is not an IP address or network") from None

    def _path(self, text: str) -> Path:
        path = Path(text).expanduser()
        if path.is_absolute():
            return path
        return Path(os.path.normpath((self._base_dir or self._state_dir) / path))


def format_key(keypath: KeyPath) -> str:
    out = ""
    for part in keypath:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _kind_name(kind: type) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(kind, kind.__name__)


def _suggest(key: str, allowed: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    return (
        f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(sorted(allowed))})"
    )
