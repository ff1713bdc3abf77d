"""Configuration files: TOML (stdlib tomllib) read into the frozen dataclasses of
`sipserver.config.schema`. Unknown keys and wrong types are errors; every error names the key
path and, where the file has it, the line."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from sipserver.config.choices import Action
from sipserver.config.host import HostDefaults
from sipserver.config.reader import Reader
from sipserver.config.schema import SECTIONS, SIBLING_NAME, Config, DialPlanSettings, PeerSettings
from sipserver.errors import ConfigError
from sipserver.sip.flow import Transport

__all__ = ["ConfigError", "HostDefaults", "load_config", "parse_config"]


def load_config(path: str | Path | None = None, host: HostDefaults | None = None) -> Config:
    """Load a file, or the embedded default when path is None."""
    if path is None:
        text = resources.files("sipserver").joinpath("default.toml").read_text("utf-8")
        return parse_config(text, source="<embedded default>", host=host)
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("is not UTF-8 text", path=str(path)) from exc
    return parse_config(text, source=str(path), base_dir=path.resolve().parent, host=host)


def parse_config(
    text: str,
    *,
    source: str = "<string>",
    base_dir: Path | None = None,
    host: HostDefaults | None = None,
) -> Config:
    host = host or HostDefaults.of_this_host()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        raise ConfigError(
            f"TOML syntax error: {exc}", line=int(match.group(1)) if match else None, path=source
        ) from exc
    reader = Reader(text, source, base_dir, host.state_dir)
    top = reader.table(data, (), set(SECTIONS))
    sections: dict[str, Any] = {}
    for name, (cls, array) in SECTIONS.items():
        defaults = {"fqdn": host.fqdn} if name == "server" else None
        if not array:
            sections[name] = reader.section(cls, top.get(name, {}), (name,), defaults)
            continue
        items = top.get(name, [])
        if not isinstance(items, list):
            raise reader.error((name,), f"must be an array of tables: write [[{name}]]")
        sections[name] = tuple(reader.section(cls, item, (name, i)) for i, item in enumerate(items))
    peers = tuple(_normalised(peer) for peer in sections.pop("peer"))
    plans = sections.pop("dial_plan")
    _unique_names(reader, "peer", peers)
    for index, peer in enumerate(peers):
        _check_peer(reader, index, peer)
    _unique_names(reader, "dial_plan", plans)
    for index, plan in enumerate(plans):
        _check_plan(reader, index, plan, {peer.name: peer for peer in peers})
    registrar = sections["registrar"]
    if registrar.min_expires > registrar.max_expires:
        raise reader.error(
            ("registrar", "min_expires"),
            f"{registrar.min_expires} is more than max_expires ({registrar.max_expires})",
        )
    server = sections.pop("server")
    server = dataclasses.replace(server, fqdn=server.fqdn.lower().rstrip("."))
    return Config(server=server, peers=peers, dial_plans=plans, source=source, **sections)


def _normalised(peer: PeerSettings) -> PeerSettings:
    return dataclasses.replace(peer, fqdn=peer.fqdn.lower().rstrip("."))


def _unique_names(reader: Reader, table: str, items: tuple[Any, ...]) -> None:
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.name in seen:
            raise reader.error(
                (table, index, "name"),
                f"{item.name!r} is already used by {table}[{seen[item.name]}]",
            )
        seen[item.name] = index


def _check_peer(reader: Reader, index: int, peer: PeerSettings) -> None:
    if peer.name == SIBLING_NAME:
        raise reader.error(
            ("peer", index, "name"), f"{SIBLING_NAME!r} is our own processes' name: pick another"
        )
    if peer.is_softphone and not peer.numbers:
        raise reader.error(
            ("peer", index, "numbers"), "a softphone must list the numbers it may register"
        )
    if peer.numbers and not peer.is_softphone:
        raise reader.error(
            ("peer", index, "numbers"),
            f'only a softphone registers numbers; this peer is kind = "{peer.kind.value}"',
        )


def _check_plan(
    reader: Reader, index: int, plan: DialPlanSettings, peers: dict[str, PeerSettings]
) -> None:
    key = ("dial_plan", index)
    known = ", ".join(peers) or "none configured"
    for field_key, names in (("from", plan.from_peers), ("targets", plan.targets)):
        unknown = next((name for name in names if name not in peers), None)
        if unknown is not None:
            raise reader.error((*key, field_key), f"unknown peer {unknown!r} (peers: {known})")
    if plan.action is Action.ANSWER and plan.targets:
        raise reader.error(
            (*key, "targets"), 'action = "answer" answers the call here: list no targets'
        )
    if plan.action is not Action.ANSWER and not plan.targets:
        raise reader.error(
            (*key, "targets"),
            'must list at least one peer (or set action = "answer" to answer calls here)',
        )
    if plan.action is Action.REDIRECT and any(peers[t].is_softphone for t in plan.targets):
        raise reader.error(
            (*key, "targets"),
            "a softphone is reached over its own flow: it cannot be redirected to",
        )
    if plan.requires_tls:
        for target in plan.targets:
            if peers[target].is_softphone:
                continue  # reached over the flow it registered on: checked per call
            if peers[target].transport is not Transport.TLS:
                raise reader.error(
                    (*key, "targets"),
                    f"peer {target!r} uses transport {peers[target].transport.value!r}, "
                    f"but dial plan {plan.name!r} is {plan.security.value} and needs mutual TLS "
                    "to its targets",
                )
