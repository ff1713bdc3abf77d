"""docs/configuration.md, written from the schema: every key with its default and meaning
as declared in `schema.py`, so the page cannot drift from the code (a test compares them).

    python -m sipserver.config.reference > docs/configuration.md
"""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path
from typing import Any

from sipserver.config.schema import SECTIONS

INTRO = """\
# Configuration reference

<!-- Written by `python -m sipserver.config.reference > docs/configuration.md` from
sipserver/config/schema.py; edit the schema, not this page (a test keeps them equal). -->

sipserver reads one TOML file (`sipserver run --config PATH`; without it, the embedded
default `sipserver/default.toml`). Every key below has its default; a file names only what
it changes. [`examples/sipserver.toml`](../examples/sipserver.toml) is a commented example with
every key. Unknown keys and wrong types are errors that name the file, line and key path
(`sipserver.toml:12: peer[1].fqdn: 'gw 1' is not a valid FQDN`); `sipserver check-config
PATH` runs every check the server runs at start and at each reload (a reload with a bad file
keeps the running configuration). Relative paths are relative to the configuration file.

`<state>` is `$SIPSERVER_STATE_DIR`, else `/var/lib/sipserver` for root, else
`$XDG_STATE_HOME/sipserver` (`~/.local/state/sipserver`).
"""

SECTION_INTROS = {
    "server": "Who we are and where we listen.",
    "tls": "Our certificate, the CAs peers must chain to, and the handshake.",
    "limits": "Sizes, counts and time limits, so that no peer or stranger can exhaust the "
    "server; and overload shedding.",
    "log": "Log lines: level, format, and how repeated refusals are summarised.",
    "peer": "One table per gateway, PBX or softphone on the allow-list.",
    "dial_plan": "One table per dial plan: which peers' calls to which numbers go where, "
    "in which security mode. The first matching plan wins.",
    "routing": "Failover and health checks of targets.",
    "timers": "RFC 3261 timer bases (Table 4).",
    "admin": "The `/healthz` and `/metrics` listener.",
    "registrar": "Softphone registrations (RFC 3261 §10, RFC 5626 outbound).",
    "dns": "How targets' FQDNs are located (RFC 3263: NAPTR, SRV, A/AAAA).",
    "cluster": "State shared between instances (softphone bindings, call counts).",
    "capture": "A copy of every SIP message for a HEP collector (Homer, sngrep).",
}


def shown_default(spec: dataclasses.Field[Any]) -> str:
    shown = spec.metadata.get("shown")
    if shown:
        return str(shown)
    if spec.default is not dataclasses.MISSING:
        return f"`{toml_value(spec.default)}`" if spec.default is not None else "unset"
    if spec.default_factory is not dataclasses.MISSING:
        return f"`{toml_value(spec.default_factory())}`"
    return "required"


def toml_value(value: Any) -> str:
    """A default as it is written in a TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return toml_value(value.value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return repr(value)


def key_name(spec: dataclasses.Field[Any]) -> str:
    return str(spec.metadata.get("key") or spec.name)


def page() -> str:
    parts = [INTRO]
    for section, (cls, array) in SECTIONS.items():
        heading = f"[[{section}]]" if array else f"[{section}]"
        parts.append(f"\n## `{heading}`\n\n{SECTION_INTROS[section]}\n")
        parts.append("\n| Key | Default | Meaning |\n|---|---|---|\n")
        for spec in dataclasses.fields(cls):
            doc = str(spec.metadata.get("doc", "")).replace("|", "\\|")
            parts.append(f"| `{key_name(spec)}` | {shown_default(spec)} | {doc} |\n")
    return "".join(parts)


if __name__ == "__main__":
    print(page(), end="")
