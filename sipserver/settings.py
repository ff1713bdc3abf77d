"""The configuration as frozen dataclasses: every key is declared once, here, with its type,
default, meaning and check. `sipserver.config` reads TOML into these types; the core only
ever sees them. Pure: no file, host or clock access (host defaults come from the loader).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipserver.settings_checks import (
    Check,
    at_least,
    deny_patterns,
    env_name,
    fqdn,
    fqdn_or_ip,
    header_name,
    hep_address,
    ip_address,
    ip_addresses,
    ip_and_port,
    methods,
    nameservers,
    not_empty,
    not_negative,
    number_patterns,
    numbers,
    off_or_seconds,
    port,
    positive,
    send_port,
    some,
    store_url,
    workers,
)
from sipserver.sip.flow import Transport
from sipserver.sip.timers import TimerValues

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Security(enum.StrEnum):
    """A dial plan's VoIP security mode (Exchange UM's three settings)."""

    UNSECURED = "unsecured"
    SIP_SECURED = "sip-secured"
    SECURED = "secured"

    @property
    def requires_tls(self) -> bool:
        return self is not Security.UNSECURED


class PeerKind(enum.StrEnum):
    GATEWAY = "gateway"
    PBX = "pbx"
    SOFTPHONE = "softphone"  # registers its numbers; reached over the flow it registered on


class Action(enum.StrEnum):
    PROXY = "proxy"
    REDIRECT = "redirect"
    ANSWER = "answer"  # sipserver answers the call itself (an echo-test number for interop)


class UnknownSource(enum.StrEnum):
    REJECT = "reject"  # 403 with a Warning that says why
    DROP = "drop"  # no answer at all


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(enum.StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class TlsVersion(enum.StrEnum):
    V1_2 = "1.2"
    V1_3 = "1.3"


class KeyType(enum.StrEnum):
    EC_P256 = "ec-p256"
    RSA_2048 = "rsa-2048"


DEFAULT_SIP_PORT = 5060
DEFAULT_TLS_PORT = 5061
# The peer name our own processes have on the sibling hop (in logs and Record-Route); a
# configured peer may not take it.
SIBLING_NAME = "sipserver-sibling"


def setting(
    default: Any = ...,
    doc: str = "",
    check: Check | None = None,
    *,
    key: str | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """One configuration key: its default (`...` = required), what it means, its check, and
    its TOML name when that is not a Python name."""
    metadata = {"doc": doc, "check": check, "key": key}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    if default is ...:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


# --- the sections -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ServerSettings:
    fqdn: str = setting(..., "our FQDN (default: the host name); what TLS peers verify", fqdn)
    addresses: tuple[str, ...] = setting(("0.0.0.0", "::"), "addresses to listen on", ip_addresses)
    sip_port: int = setting(DEFAULT_SIP_PORT, "plain SIP port (UDP and TCP)", port)
    tls_port: int = setting(DEFAULT_TLS_PORT, "mutual-TLS SIP port", port)
    transports: tuple[Transport, ...] = setting(tuple(Transport), "listeners to open", some)
    unknown_source: UnknownSource = setting(
        UnknownSource.REJECT, "what a request from no configured peer gets"
    )
    watch_interval: float = setting(
        1.0, "seconds between checks of config/certificate/trust files; 0 = off", off_or_seconds
    )
    shutdown_grace: float = setting(
        30.0, "seconds transactions in flight get to finish on SIGTERM", not_negative
    )
    advertised_host: str | None = setting(
        None, "host for our Via/Record-Route when peers cannot resolve fqdn", fqdn_or_ip
    )
    reload_debounce: float = setting(
        0.5, "quiet seconds after a file change before the reload", not_negative
    )
    workers: int | str = setting(
        1, 'processes sharing the listening ports (SO_REUSEPORT); "auto" = one per CPU', workers
    )
    user_agent: str = setting(
        "sipserver",
        'the Server header of our responses (no version, which scanners fingerprint); "" = none',
    )
    worker_port_base: int = setting(
        0,
        "workers' own ports: worker i gets base+i (UDP/TCP) and base+N+i (TLS); 0 = any free",
        port,
    )


@dataclass(frozen=True, slots=True)
class TlsSettings:
    certificate_dir: Path = setting(
        Path("certs/server"), "our certificates (default: <state dir>/certs/server)"
    )
    trust_dir: Path = setting(
        Path("certs/trust"), "trust anchors and CRLs (default: <state dir>/certs/trust)"
    )
    handshake_timeout: float = setting(5.0, "seconds a peer gets to finish TLS", positive)
    min_version: TlsVersion = setting(TlsVersion.V1_2, "lowest TLS version accepted")
    generated_key_type: KeyType = setting(KeyType.EC_P256, "key of a generated certificate")
    pkcs12_password_file: Path | None = setting(
        None, "file holding the password of .pfx/.p12 files in certificate_dir"
    )
    pkcs12_password_env: str | None = setting(
        None, "... or the environment variable holding it", env_name
    )
    certificate_check_interval: float = setting(
        3600.0, "seconds between expiry checks and re-selection", positive
    )
    peer_expiry_warning_days: int = setting(
        30, "days before a peer certificate's expiry that warnings start", at_least(1)
    )
    peer_table: Path = setting(
        Path("peers.json"), "the peers' last certificates (default: <state dir>/peers.json)"
    )
    keylog_file: Path | None = setting(
        None,
        "append every TLS session's secrets here (NSS key log format) so that Wireshark can"
        " decrypt a capture; unset = off. Anyone with the file reads the calls: a warning at"
        " start and in /healthz while it is on",
    )


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    max_message_bytes: int = setting(65535, "largest SIP message accepted", at_least(1024))
    max_calls: int = setting(
        0,
        "calls in progress in the whole server at most (a last guard); 0 = no limit",
        not_negative,
    )
    max_header_count: int = setting(256, "most header lines in one message", at_least(8))
    max_line_bytes: int = setting(8192, "longest header line", at_least(256))
    max_connections: int = setting(10000, "TCP/TLS connections in all", at_least(1))
    max_connections_per_address: int = setting(200, "connections from one address", at_least(1))
    max_unverified_connections: int = setting(
        1000,
        "connections with no proven peer yet (TCP from an unknown address, TLS in handshake);"
        " when full, the oldest is evicted for a new one",
        at_least(1),
    )
    max_unverified_per_address: int = setting(
        50,
        "of those, how many one address may hold (TLS handshakes from configured peers'"
        " addresses have a budget of their own)",
        at_least(1),
    )
    unverified_idle_timeout: float = setting(
        10.0, "seconds a TCP connection from an address of no peer may stay silent", positive
    )
    idle_timeout: float = setting(300.0, "seconds a silent connection is kept", positive)
    send_timeout: float = setting(10.0, "seconds a blocked send may take", positive)
    keepalive_interval: float = setting(
        30.0, "CRLFCRLF pings on our outbound connections; 0 = off", off_or_seconds
    )
    send_queue_bytes: int = setting(
        1 << 20, "bytes queued for one peer before it counts as not reading", at_least(65536)
    )
    overload_busy: float = setting(
        0.98,
        "share of the time the event loop may be busy (0-1) before new calls get 503; 0 = never",
        lambda v: None if 0 <= v <= 1 else "must be between 0 (off) and 1",
    )
    overload_backlog_bytes: int = setting(
        16384,
        "unread bytes left after a read that mean we fall behind; 0 = busy alone decides",
        not_negative,
    )
    overload_retry_after: int = setting(
        5, "seconds, in the Retry-After of a 503 for a call shed in overload", not_negative
    )


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: LogLevel = setting(LogLevel.INFO, "lowest level written")
    format: LogFormat = setting(LogFormat.AUTO, "json, console, or auto (console on a TTY)")
    repeat_interval: float = setting(
        10.0,
        "seconds over which the same refusal from one address is counted into one line; 0 = all",
        not_negative,
    )


@dataclass(frozen=True, slots=True)
class PeerSettings:
    name: str = setting(..., "the peer's name in dial plans and logs", not_empty)
    fqdn: str = setting(..., "the name its certificate must carry (RFC 5922)", fqdn)
    kind: PeerKind = setting(PeerKind.GATEWAY, "gateway, pbx or softphone")
    numbers: tuple[str, ...] = setting(
        (), "softphone: the numbers (AOR user parts) it may register", numbers
    )
    addresses: tuple[IPNetwork, ...] = setting((), "source addresses on the plain SIP port")
    allow_wildcard: bool = setting(False, "accept a wildcard certificate for fqdn")
    port: int | None = setting(
        None, "where we send to it (default 5061 for tls, else 5060)", send_port
    )
    transport: Transport = setting(Transport.TLS, "what we use towards it when a mode allows")
    health_check: float = setting(
        30.0, "seconds between OPTIONS pings; 0 turns them off", off_or_seconds
    )
    max_calls: int = setting(
        0, "its calls in progress at most (more: 503 + Retry-After); 0 = no limit", not_negative
    )
    max_call_rate: float = setting(
        0.0, "new calls a second it may start (a token bucket); 0 = no limit", not_negative
    )
    max_call_burst: int = setting(
        0, "calls it may start at once above max_call_rate (0: one second's worth)", not_negative
    )

    @property
    def is_softphone(self) -> bool:
        return self.kind is PeerKind.SOFTPHONE

    @property
    def send_port(self) -> int:
        return self.port or (
            DEFAULT_TLS_PORT if self.transport is Transport.TLS else DEFAULT_SIP_PORT
        )


@dataclass(frozen=True, slots=True)
class DialPlanSettings:
    name: str = setting(..., "the plan's name in logs and metrics", not_empty)
    security: Security = setting(..., "unsecured, sip-secured or secured")
    numbers: tuple[str, ...] = setting(
        ..., 'exact, "x" = one digit, trailing "*" = any rest', number_patterns
    )
    from_peers: tuple[str, ...] = setting(
        ..., "the peers whose calls belong here", some, key="from"
    )
    max_calls: int = setting(
        0, "calls in progress in this plan at most (a trunk's capacity); 0 = no limit", not_negative
    )
    deny_numbers: tuple[str, ...] = setting(
        (),
        "numbers of this plan refused with 403 (toll fraud): patterns as in numbers, e.g."
        ' "1900*", "011*"; "!" before one makes it an exception ("+*", "!+44*")',
        deny_patterns,
    )
    targets: tuple[str, ...] = setting((), "peer names, tried in order (none for answer)")
    action: Action = setting(Action.PROXY, "proxy, redirect, or answer (sipserver answers)")
    answer_after: float = setting(
        1.0, "answer: seconds of ringing (180) before the 200 OK", not_negative
    )
    answer_hangup_after: float = setting(
        0.0, "answer: seconds after the answer when we hang up (0 = the caller does)", not_negative
    )

    @property
    def requires_tls(self) -> bool:
        return self.security.requires_tls


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    retry_after: int = setting(
        30, "seconds, in the Retry-After of a 503 when no target is healthy", not_negative
    )
    down_after_failures: int = setting(
        3, "failed health checks before a target is skipped", at_least(1)
    )
    identity_header: str = setting(
        "X-Peer-Identity", "header naming the verified caller", header_name
    )


@dataclass(frozen=True, slots=True)
class RegistrarSettings:
    min_expires: int = setting(
        60, "shortest registration accepted (shorter: 423 Interval Too Brief)", at_least(1)
    )
    max_expires: int = setting(3600, "longest registration granted (longer is cut)", at_least(1))
    default_expires: int = setting(
        3600, "a registration that asks for no expiry gets this", at_least(1)
    )
    flow_timer: int = setting(
        120,
        "RFC 5626 Flow-Timer: seconds within which an outbound softphone sends a keep-alive",
        at_least(10),
    )
    max_bindings: int = setting(
        10,
        "contacts one number may have registered at once (past it the oldest goes)",
        at_least(1),
    )
    max_contacts: int = setting(
        20, "Contacts one REGISTER may carry (more: 400, nothing changed)", at_least(1)
    )


@dataclass(frozen=True, slots=True)
class DnsSettings:
    nameservers: tuple[str, ...] = setting(
        (), '"IP:PORT" servers to ask instead of /etc/resolv.conf (split DNS, tests)', nameservers
    )
    timeout: float = setting(
        5.0, "seconds one location of a target (NAPTR, SRV, A/AAAA) may take", positive
    )


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    hep: str | None = setting(
        None,
        '"udp:IP:PORT" or "tcp:IP:PORT": a HEP v3 collector (Homer, sngrep) that gets a copy'
        " of every SIP message received and sent, decrypted; unset = off",
        hep_address,
    )
    hep_id: int = setting(2001, "the capture agent ID in each HEP packet", at_least(0))
    methods: tuple[str, ...] = setting(
        (), "only these methods and their responses (e.g. INVITE, BYE); empty = all", methods
    )


@dataclass(frozen=True, slots=True)
class AdminSettings:
    address: str | None = setting(
        None, '"127.0.0.1:9060": /healthz and /metrics; unset = off', ip_and_port
    )

    @property
    def host_port(self) -> tuple[str, int] | None:
        if self.address is None:
            return None
        host, _, port_text = self.address.rpartition(":")
        return host.strip("[]"), int(port_text)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    store: str | None = setting(
        None,
        '"redis://HOST:PORT/DB" (Redis or Valkey >= 7): softphone bindings shared by every '
        "instance; unset = this machine only (workers share through their supervisor)",
        store_url,
    )
    advertise: str | None = setting(
        None,
        "the IP other instances reach our TLS port at (default: the first listen address "
        "that is not 0.0.0.0 or ::, else loopback)",
        ip_address,
    )
    timeout: float = setting(
        0.25,
        "seconds a call waits for the store before ringing this instance's flows only",
        positive,
    )


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerSettings
    tls: TlsSettings
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    peers: tuple[PeerSettings, ...] = ()
    dial_plans: tuple[DialPlanSettings, ...] = ()
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    timers: TimerValues = field(default_factory=TimerValues)
    admin: AdminSettings = field(default_factory=AdminSettings)
    registrar: RegistrarSettings = field(default_factory=RegistrarSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    source: str = "<embedded default>"

    def peer(self, name: str) -> PeerSettings:
        return next(p for p in self.peers if p.name == name)


# The TOML tables: name -> (type, array of tables?)
SECTIONS: dict[str, tuple[type, bool]] = {
    "server": (ServerSettings, False),
    "tls": (TlsSettings, False),
    "limits": (LimitsSettings, False),
    "log": (LogSettings, False),
    "peer": (PeerSettings, True),
    "dial_plan": (DialPlanSettings, True),
    "routing": (RoutingSettings, False),
    "timers": (TimerValues, False),
    "admin": (AdminSettings, False),
    "registrar": (RegistrarSettings, False),
    "dns": (DnsSettings, False),
    "cluster": (ClusterSettings, False),
    "capture": (CaptureSettings, False),
}
