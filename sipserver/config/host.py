"""Defaults that come from the host: its name and where state lives. Read by the loader
(never by the core), so that a configuration is a pure value once loaded."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class HostDefaults:
    fqdn: str
    state_dir: Path

    @classmethod
    def of_this_host(cls) -> HostDefaults:
        return cls(default_fqdn(), default_state_dir())


def default_state_dir() -> Path:
    """Where generated certificates live when the config names no folder."""
    if env := os.environ.get("SIPSERVER_STATE_DIR"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/sipserver")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sipserver"


def default_fqdn() -> str:
    return socket.gethostname().lower() or "localhost"
