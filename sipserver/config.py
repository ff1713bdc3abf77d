"""Configuration: TOML (stdlib tomllib) into frozen dataclasses.

Unknown keys and wrong types are errors. Every error names the key path and, where the
file has it, the line, e.g. `peer[1].fqdn (line 23): "gw 1" is not a valid FQDN`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class ConfigError(Exception):
    def __init__(
        self, message: str, key: str = "", line: int | None = None, path: str = ""
    ) -> None:
        self.message = message
        self.key = key
        self.line = line
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        head = f"{where}: " if where else ""
        return f"{head}{self.key}: {self.message}" if self.key else f"{head}{self.message}"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    fqdn: str
    addresses: tuple[str, ...] = ("0.0.0.0", "::")
    sip_port: int = 5060
    tls_port: int = 5061
    transports: tuple[str, ...] = ("udp", "tcp", "tls")
    unknown_source: str = "reject"
    watch_interval: float = 1.0  # seconds between checks of config/certificate/trust files; 0 = off
    shutdown_grace: float = 30.0  # seconds transactions in flight get to finish on SIGTERM
    advertised_host: str | None = (
        None  # host for our Via/Record-Route when peers cannot resolve fqdn
    )
    reload_debounce: float = 0.5  # quiet time after a change before the reload


@dataclass(frozen=True, slots=True)
class TlsSettings:
    certificate_dir: Path
    trust_dir: Path
    handshake_timeout: float = 5.0
    min_version: str = "1.2"
    generated_key_type: str = "ec-p256"
    pkcs12_password_file: Path | None = None  # password of .pfx/.p12 files in certificate_dir
    pkcs12_password_env: str | None = None  # ... or the environment variable holding it
    certificate_check_interval: float = 3600.0  # seconds between expiry checks and re-selection


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    max_message_bytes: int = 65535
    max_header_count: int = 256
    max_line_bytes: int = 8192
    max_connections: int = 10000
    max_connections_per_address: int = 200
    idle_timeout: float = 300.0
    send_timeout: float = 10.0
    keepalive_interval: float = 30.0  # CRLFCRLF pings on our outbound connections; 0 = off
    send_queue_bytes: int = 1 << 20  # bytes queued for one peer before it counts as not reading


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True, slots=True)
class PeerSettings:
    name: str
    fqdn: str
    kind: str
    addresses: tuple[IPNetwork, ...] = ()
    allow_wildcard: bool = False
    port: int | None = None  # where we send to it; None: 5061 for tls, else 5060
    transport: str = "tls"  # what we use towards it when a security mode allows a choice
    health_check: float = 30.0  # seconds between OPTIONS pings; 0 turns them off

    @property
    def send_port(self) -> int:
        return self.port or (5061 if self.transport == "tls" else 5060)


SECURITY_MODES = ("unsecured", "sip-secured", "secured")


@dataclass(frozen=True, slots=True)
class DialPlanSettings:
    name: str
    security: str  # unsecured | sip-secured | secured
    numbers: tuple[str, ...]  # exact, "x" = one digit, trailing "*" = any rest
    from_peers: tuple[str, ...]  # config key "from": the peers whose calls belong here
    action: str  # proxy | redirect
    targets: tuple[str, ...]  # peer names, tried in order

    @property
    def requires_tls(self) -> bool:
        return self.security != "unsecured"


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """RFC 3261 timer bases (Table 4). Timer B/F = 64*T1 is how long a silent target
    holds a call before failover."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_c: float = 180.0


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    retry_after: int = 30  # seconds, in the Retry-After of a 503 when no target is healthy
    down_after_failures: int = 3  # failed health checks before a target is skipped
    identity_header: str = "X-Peer-Identity"


@dataclass(frozen=True, slots=True)
class AdminSettings:
    address: str | None = None  # "127.0.0.1:9060": /healthz and /metrics; None = off

    @property
    def host_port(self) -> tuple[str, int] | None:
        if self.address is None:
            return None
        host, _, port = self.address.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerSettings
    tls: TlsSettings
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    peers: tuple[PeerSettings, ...] = ()
    dial_plans: tuple[DialPlanSettings, ...] = ()
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    timers: TimerSettings = field(default_factory=TimerSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    source: str = "<embedded default>"

    def peer(self, name: str) -> PeerSettings:
        return next(p for p in self.peers if p.name == name)


# --- helpers ----------------------------------------------------------------------------
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


def is_fqdn(name: str) -> bool:
    name = name.rstrip(".")
    if not name or len(name) > 253:
        return False
    try:
        ipaddress.ip_address(name)
        return False
    except ValueError:
        pass
    return all(_LABEL.match(label) for label in name.split("."))


class _LineFinder:
    """Finds the line of a key path in TOML text (tomllib does not report positions)."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"]+)\s*\]\]?")

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines()

    def find(self, path: tuple[str | int, ...]) -> int | None:
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


class _Reader:
    def __init__(self, text: str, path: str) -> None:
        self._finder = _LineFinder(text)
        self._path = path

    def error(self, keypath: tuple[str | int, ...], message: str) -> ConfigError:
        return ConfigError(message, _format_key(keypath), self._finder.find(keypath), self._path)

    def table(self, data: Any, keypath: tuple[str | int, ...], allowed: set[str]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.error(keypath, "must be a table")
        for key in data:
            if key not in allowed:
                hint = _suggest(key, allowed)
                raise self.error((*keypath, key), f"unknown key{hint}")
        return data

    def get(
        self,
        data: dict[str, Any],
        keypath: tuple[str | int, ...],
        key: str,
        kind: type | tuple[type, ...],
        default: Any = ...,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        full = (*keypath, key)
        if key not in data:
            if default is ...:
                raise self.error(full, "is required")
            return default
        value = data[key]
        if (
            isinstance(value, bool)
            and kind is not bool
            and not (isinstance(kind, tuple) and bool in kind)
        ):
            raise self.error(full, f"must be {_kind_name(kind)}, not a boolean")
        if kind is float and isinstance(value, int):
            value = float(value)
        if kind is list and isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                raise self.error(full, "must be a list of strings")
        elif not isinstance(value, kind):
            raise self.error(
                full, f"must be {_kind_name(kind)}, got {type(value).__name__} {value!r}"
            )
        if check is not None and (problem := check(value)):
            raise self.error(full, problem)
        return value


def _format_key(keypath: tuple[str | int, ...]) -> str:
    out = ""
    for part in keypath:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list of strings",
    }
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def _suggest(key: str, allowed: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    return (
        f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(sorted(allowed))})"
    )


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else f"{v} is not a port (0-65535; 0 picks a free port)"


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _fqdn(v: str) -> str | None:
    return None if is_fqdn(v) else f"{v!r} is not a valid FQDN"


# --- loading ----------------------------------------------------------------------------
def load_config(path: str | Path | None = None) -> Config:
    """Load a file, or the embedded default when path is None."""
    if path is None:
        text = resources.files("sipserver").joinpath("default.toml").read_text("utf-8")
        return parse_config(text, source="<embedded default>", base_dir=None)
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("is not UTF-8 text", path=str(path)) from exc
    return parse_config(text, source=str(path), base_dir=path.resolve().parent)


def parse_config(text: str, *, source: str = "<string>", base_dir: Path | None = None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        raise ConfigError(
            f"TOML syntax error: {exc}", line=int(match.group(1)) if match else None, path=source
        ) from exc
    r = _Reader(text, source)
    top = r.table(
        data,
        (),
        {"server", "tls", "limits", "log", "peer", "dial_plan", "routing", "timers", "admin"},
    )
    server = _server(r, top.get("server", {}))
    tls = _tls(r, top.get("tls", {}), base_dir)
    limits = _limits(r, top.get("limits", {}))
    log = _log(r, top.get("log", {}))
    peers_data = top.get("peer", [])
    if not isinstance(peers_data, list):
        raise r.error(("peer",), "must be an array of tables: write [[peer]]")
    peers = tuple(_peer(r, item, i) for i, item in enumerate(peers_data))
    seen_names: dict[str, int] = {}
    for i, peer in enumerate(peers):
        if peer.name in seen_names:
            raise r.error(
                ("peer", i, "name"),
                f"{peer.name!r} is already used by peer[{seen_names[peer.name]}]",
            )
        seen_names[peer.name] = i
    plans_data = top.get("dial_plan", [])
    if not isinstance(plans_data, list):
        raise r.error(("dial_plan",), "must be an array of tables: write [[dial_plan]]")
    by_name = {peer.name: peer for peer in peers}
    plans = tuple(_dial_plan(r, item, i, by_name) for i, item in enumerate(plans_data))
    seen_plans: dict[str, int] = {}
    for i, plan in enumerate(plans):
        if plan.name in seen_plans:
            raise r.error(
                ("dial_plan", i, "name"),
                f"{plan.name!r} is already used by dial_plan[{seen_plans[plan.name]}]",
            )
        seen_plans[plan.name] = i
    routing = _routing(r, top.get("routing", {}))
    timers = _timers(r, top.get("timers", {}))
    admin = _admin(r, top.get("admin", {}))
    return Config(server, tls, limits, log, peers, plans, routing, timers, admin, source)


def _admin(r: _Reader, data: Any) -> AdminSettings:
    k: tuple[str | int, ...] = ("admin",)
    d = r.table(data, k, {"address"})

    def address_ok(value: str) -> str | None:
        host, sep, port = value.rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return f"{value!r} is not IP:PORT (e.g. 127.0.0.1:9060)"
        return (
            None
            if sep and port.isdigit() and 0 <= int(port) < 65536
            else f"{value!r} has no valid port"
        )

    return AdminSettings(address=r.get(d, k, "address", str, None, address_ok))


def _timers(r: _Reader, data: Any) -> TimerSettings:
    k: tuple[str | int, ...] = ("timers",)
    d = r.table(data, k, {"t1", "t2", "t4", "timer_c"})
    defaults = TimerSettings()
    t1 = r.get(d, k, "t1", float, defaults.t1, _positive)
    return TimerSettings(
        t1=t1,
        t2=r.get(
            d, k, "t2", float, defaults.t2, lambda v: None if v >= t1 else "must be at least t1"
        ),
        t4=r.get(d, k, "t4", float, defaults.t4, _positive),
        timer_c=r.get(
            d,
            k,
            "timer_c",
            float,
            defaults.timer_c,
            lambda v: None if v > 180 or v == 180 else "must be at least 180 s (RFC 3261 §16.6)",
        ),
    )


def _server(r: _Reader, data: Any) -> ServerSettings:
    k: tuple[str | int, ...] = ("server",)
    d = r.table(
        data,
        k,
        {
            "fqdn",
            "addresses",
            "sip_port",
            "tls_port",
            "transports",
            "unknown_source",
            "watch_interval",
            "reload_debounce",
            "shutdown_grace",
            "advertised_host",
        },
    )

    def addresses_ok(values: list[str]) -> str | None:
        for value in values:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                return f"{value!r} is not an IP address"
        return None if values else "must list at least one address"

    def transports_ok(values: list[str]) -> str | None:
        bad = [v for v in values if v not in ("udp", "tcp", "tls")]
        if bad:
            return f"unknown transport {bad[0]!r} (udp, tcp, tls)"
        return None if values else "must list at least one transport"

    return ServerSettings(
        fqdn=r.get(d, k, "fqdn", str, default_fqdn(), _fqdn).lower().rstrip("."),
        addresses=tuple(r.get(d, k, "addresses", list, ["0.0.0.0", "::"], addresses_ok)),
        sip_port=r.get(d, k, "sip_port", int, 5060, _port),
        tls_port=r.get(d, k, "tls_port", int, 5061, _port),
        transports=tuple(r.get(d, k, "transports", list, ["udp", "tcp", "tls"], transports_ok)),
        advertised_host=r.get(
            d,
            k,
            "advertised_host",
            str,
            None,
            lambda v: (
                None if is_fqdn(v) or _is_ip(v) else f"{v!r} is neither an FQDN nor an IP address"
            ),
        ),
        shutdown_grace=r.get(
            d,
            k,
            "shutdown_grace",
            float,
            30.0,
            lambda v: None if v >= 0 else "must be 0 or more seconds",
        ),
        watch_interval=r.get(
            d,
            k,
            "watch_interval",
            float,
            1.0,
            lambda v: None if v >= 0 else "must be 0 (off) or more seconds",
        ),
        reload_debounce=r.get(
            d,
            k,
            "reload_debounce",
            float,
            0.5,
            lambda v: None if v >= 0 else "must be 0 or more seconds",
        ),
        unknown_source=r.get(d, k, "unknown_source", str, "reject", _one_of("reject", "drop")),
    )


def _resolve(value: str, base_dir: Path | None) -> Path:
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    return Path(os.path.normpath((base_dir or default_state_dir()) / path))


def _tls(r: _Reader, data: Any, base_dir: Path | None) -> TlsSettings:
    k: tuple[str | int, ...] = ("tls",)
    d = r.table(
        data,
        k,
        {
            "certificate_dir",
            "trust_dir",
            "handshake_timeout",
            "min_version",
            "generated_key_type",
            "pkcs12_password_file",
            "pkcs12_password_env",
            "certificate_check_interval",
        },
    )
    state = default_state_dir()
    cert_dir = r.get(d, k, "certificate_dir", str, None)
    trust_dir = r.get(d, k, "trust_dir", str, None)
    password_file = r.get(d, k, "pkcs12_password_file", str, None)
    return TlsSettings(
        certificate_dir=_resolve(cert_dir, base_dir) if cert_dir else state / "certs" / "server",
        trust_dir=_resolve(trust_dir, base_dir) if trust_dir else state / "certs" / "trust",
        handshake_timeout=r.get(d, k, "handshake_timeout", float, 5.0, _positive),
        min_version=r.get(d, k, "min_version", str, "1.2", _one_of("1.2", "1.3")),
        generated_key_type=r.get(
            d, k, "generated_key_type", str, "ec-p256", _one_of("ec-p256", "rsa-2048")
        ),
        pkcs12_password_file=_resolve(password_file, base_dir) if password_file else None,
        certificate_check_interval=r.get(
            d, k, "certificate_check_interval", float, 3600.0, _positive
        ),
        pkcs12_password_env=r.get(
            d,
            k,
            "pkcs12_password_env",
            str,
            None,
            lambda v: (
                None
                if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", v)
                else f"{v!r} is not an environment variable name"
            ),
        ),
    )


def _limits(r: _Reader, data: Any) -> LimitsSettings:
    k: tuple[str | int, ...] = ("limits",)
    names = {
        "max_message_bytes",
        "max_header_count",
        "max_line_bytes",
        "max_connections",
        "max_connections_per_address",
        "idle_timeout",
        "send_timeout",
        "keepalive_interval",
        "send_queue_bytes",
    }
    d = r.table(data, k, names)
    defaults = LimitsSettings()

    def at_least(n: int) -> Callable[[Any], str | None]:
        return lambda v: None if v >= n else f"must be at least {n}"

    return LimitsSettings(
        max_message_bytes=r.get(
            d, k, "max_message_bytes", int, defaults.max_message_bytes, at_least(1024)
        ),
        max_header_count=r.get(
            d, k, "max_header_count", int, defaults.max_header_count, at_least(8)
        ),
        max_line_bytes=r.get(d, k, "max_line_bytes", int, defaults.max_line_bytes, at_least(256)),
        max_connections=r.get(d, k, "max_connections", int, defaults.max_connections, at_least(1)),
        max_connections_per_address=r.get(
            d,
            k,
            "max_connections_per_address",
            int,
            defaults.max_connections_per_address,
            at_least(1),
        ),
        idle_timeout=r.get(d, k, "idle_timeout", float, defaults.idle_timeout, _positive),
        send_timeout=r.get(d, k, "send_timeout", float, defaults.send_timeout, _positive),
        send_queue_bytes=r.get(
            d, k, "send_queue_bytes", int, defaults.send_queue_bytes, at_least(65536)
        ),
        keepalive_interval=r.get(
            d,
            k,
            "keepalive_interval",
            float,
            defaults.keepalive_interval,
            lambda v: None if v >= 0 else "must be 0 (off) or more seconds",
        ),
    )


def _log(r: _Reader, data: Any) -> LogSettings:
    k: tuple[str | int, ...] = ("log",)
    d = r.table(data, k, {"level", "format"})
    return LogSettings(
        level=r.get(d, k, "level", str, "info", _one_of("debug", "info", "warning", "error")),
        format=r.get(d, k, "format", str, "auto", _one_of("auto", "json", "console")),
    )


def _peer(r: _Reader, data: Any, index: int) -> PeerSettings:
    k: tuple[str | int, ...] = ("peer", index)
    d = r.table(
        data,
        k,
        {
            "name",
            "fqdn",
            "kind",
            "addresses",
            "allow_wildcard",
            "port",
            "transport",
            "health_check",
        },
    )

    def networks_ok(values: list[str]) -> str | None:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                return f"{value!r} is not an IP address or network"
        return None

    addresses = r.get(d, k, "addresses", list, [], networks_ok)
    return PeerSettings(
        name=r.get(d, k, "name", str, check=lambda v: None if v.strip() else "must not be empty"),
        fqdn=r.get(d, k, "fqdn", str, check=_fqdn).lower().rstrip("."),
        kind=r.get(d, k, "kind", str, "gateway", _one_of("gateway", "pbx")),
        addresses=tuple(ipaddress.ip_network(a, strict=False) for a in addresses),
        allow_wildcard=r.get(d, k, "allow_wildcard", bool, False),
        port=r.get(
            d, k, "port", int, None, lambda v: None if 0 < v < 65536 else f"{v} is not a port"
        ),
        transport=r.get(d, k, "transport", str, "tls", _one_of("tls", "tcp", "udp")),
        health_check=r.get(
            d,
            k,
            "health_check",
            float,
            30.0,
            lambda v: None if v >= 0 else "must be 0 (off) or more seconds",
        ),
    )


_NUMBER_PATTERN = re.compile(r"^\+?[0-9xX]*\*?$")


def _dial_plan(
    r: _Reader, data: Any, index: int, peers: dict[str, PeerSettings]
) -> DialPlanSettings:
    k: tuple[str | int, ...] = ("dial_plan", index)
    d = r.table(data, k, {"name", "security", "numbers", "from", "action", "targets"})

    def numbers_ok(values: list[str]) -> str | None:
        for value in values:
            if not value or value == "+" or not _NUMBER_PATTERN.match(value):
                return (
                    f"{value!r} is not a number pattern (digits with an optional leading +, "
                    "x for one digit, a trailing * for any rest)"
                )
        return None if values else "must list at least one number pattern"

    def peers_ok(values: list[str]) -> str | None:
        for value in values:
            if value not in peers:
                known = ", ".join(peers) or "none configured"
                return f"unknown peer {value!r} (peers: {known})"
        return None if values else "must name at least one peer"

    name = r.get(d, k, "name", str, check=lambda v: None if v.strip() else "must not be empty")
    security = r.get(d, k, "security", str, check=_one_of(*SECURITY_MODES))
    action = r.get(d, k, "action", str, "proxy", _one_of("proxy", "redirect"))
    targets = tuple(r.get(d, k, "targets", list, check=peers_ok))
    if security != "unsecured":
        for target in targets:
            if peers[target].transport != "tls":
                raise r.error(
                    (*k, "targets"),
                    f"peer {target!r} uses transport {peers[target].transport!r}, "
                    f"but dial plan {name!r} is {security} and needs mutual TLS to its targets",
                )
    return DialPlanSettings(
        name=name,
        security=security,
        numbers=tuple(r.get(d, k, "numbers", list, check=numbers_ok)),
        from_peers=tuple(r.get(d, k, "from", list, check=peers_ok)),
        action=action,
        targets=targets,
    )


def _routing(r: _Reader, data: Any) -> RoutingSettings:
    k: tuple[str | int, ...] = ("routing",)
    d = r.table(data, k, {"retry_after", "down_after_failures", "identity_header"})
    defaults = RoutingSettings()
    header_ok = re.compile(r"^[A-Za-z0-9-]+$")
    return RoutingSettings(
        retry_after=r.get(
            d,
            k,
            "retry_after",
            int,
            defaults.retry_after,
            lambda v: None if v >= 0 else "must be 0 or more seconds",
        ),
        down_after_failures=r.get(
            d,
            k,
            "down_after_failures",
            int,
            defaults.down_after_failures,
            lambda v: None if v >= 1 else "must be at least 1",
        ),
        identity_header=r.get(
            d,
            k,
            "identity_header",
            str,
            defaults.identity_header,
            lambda v: None if header_ok.match(v) else f"{v!r} is not a header name",
        ),
    )
