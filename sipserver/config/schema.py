"""The configuration as frozen dataclasses: every key is declared once, here, with its type,
default, meaning and check. `sipserver.config.loader` reads TOML into these types; the core only
ever sees them. Pure: no file, host or clock access (host defaults come from the loader).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipserver.config.checks import (
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
from sipserver.config.choices import (
    Action,
    KeyType,
    LogFormat,
    LogLevel,
    PeerKind,
    Security,
    TlsVersion,
    UnknownSource,
)
from sipserver.sip.flow import Transport
from sipserver.sip.timers import TimerValues

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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
    shown: str | None = None,
) -> Any:
    """One configuration key: its default (`...` = required), what it means (Markdown, for
    docs/configuration.md), its check, its TOML name when that is not a Python name, and
    how the reference shows its default when the loader fills it in (`shown`)."""
    metadata = {"doc": doc, "check": check, "key": key, "shown": shown}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    if default is ...:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


# --- the sections -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ServerSettings:
    fqdn: str = setting(
        ..., "our FQDN (default: the host name); what TLS peers verify", fqdn, shown="host name"
    )
    addresses: tuple[str, ...] = setting(("0.0.0.0", "::"), "addresses to listen on", ip_addresses)
    sip_port: int = setting(
        DEFAULT_SIP_PORT, "UDP and TCP (0 = a free port, shared by UDP and TCP)", port
    )
    tls_port: int = setting(DEFAULT_TLS_PORT, "mutual-TLS SIP port", port)
    transports: tuple[Transport, ...] = setting(tuple(Transport), "listeners to open", some)
    unknown_source: UnknownSource = setting(
        UnknownSource.REJECT, "5060 requests from no peer's address: `reject` (403) or `drop`"
    )
    watch_interval: float = setting(
        1.0, "seconds between checks of config/certificate/trust files; 0 = off", off_or_seconds
    )
    shutdown_grace: float = setting(
        30.0,
        "seconds calls in flight (and answered calls until their BYE) get after SIGTERM",
        not_negative,
    )
    advertised_host: str | None = setting(
        None,
        (
            "host in our Via and Record-Route, e.g. the instance's IP when peers cannot "
            "resolve the FQDN (keep the FQDN for TLS legs)"
        ),
        fqdn_or_ip,
        shown="`fqdn`",
    )
    reload_debounce: float = setting(
        0.5, "quiet seconds after a file change before the reload", not_negative
    )
    workers: int | str = setting(
        1,
        (
            'processes sharing the listening ports (`SO_REUSEPORT`), or `"auto"`: one per CPU'
            " (see [Every core](operations.md#every-core-workers))"
        ),
        workers,
    )
    user_agent: str = setting(
        "sipserver",
        (
            "the `Server` header of our responses; no version by default (svmap and friends "
            'fingerprint it); `""` sends none; a stranger\'s 403 never carries it'
        ),
    )
    worker_port_base: int = setting(
        0,
        (
            "with workers: worker *i* also listens on `base+i` (UDP/TCP) and `base+N+i` "
            "(TLS), the ports its Via and Record-Route name; `0` = any free ports"
        ),
        port,
    )


@dataclass(frozen=True, slots=True)
class TlsSettings:
    certificate_dir: Path = setting(
        Path("certs/server"),
        "our certificates (default: <state dir>/certs/server)",
        shown="`<state>/certs/server`",
    )
    trust_dir: Path = setting(
        Path("certs/trust"),
        "trust anchors and CRLs (default: <state dir>/certs/trust)",
        shown="`<state>/certs/trust`",
    )
    handshake_timeout: float = setting(5.0, "seconds a peer gets to finish TLS", positive)
    min_version: TlsVersion = setting(TlsVersion.V1_2, "lowest TLS version accepted")
    generated_key_type: KeyType = setting(
        KeyType.EC_P256, "key of a generated certificate: `ec-p256` or `rsa-2048`"
    )
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
        30,
        (
            "days before a peer's certificate (or the trust anchor it chains to) expires that"
            " `peer_certificate_expiring` warnings start, once a day"
        ),
        at_least(1),
    )
    peer_table: Path = setting(
        Path("peers.json"),
        "where each peer's last certificate is kept across restarts (written atomically)",
        shown="`<state>/peers.json`",
    )
    keylog_file: Path | None = setting(
        None,
        (
            "append every TLS session's secrets here (NSS key log format, mode 0600) so "
            "Wireshark/tshark decrypt a capture; off when unset. Whoever reads it reads the "
            "calls: `tls_keylog_on` (warning) at start and `tls_keylog_file` in `/healthz` "
            "while it is on"
        ),
    )


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    max_message_bytes: int = setting(65535, "largest SIP message accepted", at_least(1024))
    max_calls: int = setting(
        0,
        (
            "calls in progress in the whole server at most, a last guard (0 = no limit); past"
            " it `503` (see [admission control](operations.md#toll-fraud-and-admission-control))"
        ),
        not_negative,
    )
    max_header_count: int = setting(256, "most header lines in one message", at_least(8))
    max_line_bytes: int = setting(8192, "longest header line", at_least(256))
    max_connections: int = setting(10000, "TCP/TLS connections in all", at_least(1))
    max_connections_per_address: int = setting(200, "connections from one address", at_least(1))
    max_unverified_connections: int = setting(
        1000,
        (
            "connections with no proven peer yet, counted apart from `max_connections` so "
            "strangers never lock peers out: plain TCP from an address of no peer (its own "
            "budget), TLS connections still in their handshake (another budget of this size),"
            " and TLS handshakes from configured peers' `addresses` (a third, which strangers"
            " never reach). When a strangers' budget is full, its oldest connection is "
            "evicted to admit the new one (`connection_evicted`, "
            "`sipserver_connections_evicted_total`)"
        ),
        at_least(1),
    )
    max_unverified_per_address: int = setting(
        50,
        (
            "of a strangers' budget, how much one source address may hold; past it the "
            "address's own oldest connection is evicted for its new one, so a few addresses "
            "with thousands of idle connections keep no one out (a peer behind the same "
            "address included)"
        ),
        at_least(1),
    )
    unverified_idle_timeout: float = setting(
        10.0,
        (
            "seconds a TCP connection from an address of no peer may stay silent; a "
            "stranger's request gets its 403 and the connection closes"
        ),
        positive,
    )
    idle_timeout: float = setting(
        300.0, "seconds without data before a connection closes", positive
    )
    send_timeout: float = setting(
        10.0, "seconds a write may block before the connection closes", positive
    )
    keepalive_interval: float = setting(
        30.0, "seconds between CRLFCRLF pings on our outbound connections; 0 = off", off_or_seconds
    )
    send_queue_bytes: int = setting(
        1 << 20,
        (
            "bytes queued for one connection; past it, a peer's own answers wait (up to "
            "`send_timeout`) and anything from other connections closes it"
        ),
        at_least(65536),
    )
    overload_busy: float = setting(
        0.98,
        (
            "share of the time (0 to 1) the event loop may be at work before new calls "
            "(out-of-dialog INVITEs) get `503` + `Retry-After`; admitted calls and in-dialog "
            "requests go on; 0 = never shed"
        ),
        lambda v: None if 0 <= v <= 1 else "must be between 0 (off) and 1",
    )
    overload_backlog_bytes: int = setting(
        16384,
        (
            "unread bytes left in the kernel (and TLS buffer; on UDP the receive queue's "
            "memory) after a read that mean the server falls behind; overload needs both the "
            "busy loop and a backlog, and in overload every new call read with such a backlog"
            " behind it is shed (0 = the busy loop alone decides)"
        ),
        not_negative,
    )
    overload_retry_after: int = setting(
        5, "seconds, in the Retry-After of a 503 for a call shed in overload", not_negative
    )


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: LogLevel = setting(LogLevel.INFO, "`debug`, `info`, `warning`, `error`")
    format: LogFormat = setting(LogFormat.AUTO, "json, console, or auto (console on a TTY)")
    repeat_interval: float = setting(
        10.0,
        (
            "seconds over which the same kind of refusal (`connection_refused`, "
            "`connection_evicted`, `tls_peer_refused`, `sip_request_refused`, "
            "`sip_request_malformed`, and our 4xx to 6xx answers to peers' requests such as "
            "`no_dial_plan`) from one address is logged once and then counted; the kind is "
            "the reason without the quoted text and numbers the sender chose, so a flood of "
            "different bad lines or a gateway scanning numbers is one kind; each interval a "
            "`refusals_repeated` line gives the count; 0 = log every one"
        ),
        not_negative,
    )


@dataclass(frozen=True, slots=True)
class PeerSettings:
    name: str = setting(..., "the peer's name in dial plans and logs", not_empty)
    fqdn: str = setting(..., "the name its certificate must carry (RFC 5922)", fqdn)
    kind: PeerKind = setting(
        PeerKind.GATEWAY,
        "`gateway`, `pbx` or `softphone` (registers; see [Softphones](calls.md#softphones-the-registrar))",
    )
    numbers: tuple[str, ...] = setting(
        (),
        (
            "`softphone` only (and required): the numbers it may register, digits with an "
            "optional leading `+`"
        ),
        numbers,
    )
    addresses: tuple[IPNetwork, ...] = setting(
        (), "IPs/networks accepted on 5060 (first matching peer wins)"
    )
    allow_wildcard: bool = setting(False, "accept a wildcard certificate for fqdn")
    port: int | None = setting(
        None,
        "where we send to it (default 5061 for tls, else 5060)",
        send_port,
        shown="5061 (tls) / 5060",
    )
    transport: Transport = setting(
        Transport.TLS, "`tls`, `tcp` or `udp`: what we use towards it (secured modes need `tls`)"
    )
    health_check: float = setting(
        30.0, "seconds between OPTIONS pings; 0 turns them off", off_or_seconds
    )
    max_calls: int = setting(
        0,
        (
            "its calls in progress at most, from INVITE to BYE or failure (answered here "
            "included); 0 = no limit"
        ),
        not_negative,
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
    security: Security = setting(
        ..., "`unsecured`, `sip-secured`, `secured` (Exchange UM's VoIPSecurity)"
    )
    numbers: tuple[str, ...] = setting(
        ...,
        (
            "patterns for the Request-URI user part: exact, `x` = one digit, trailing `*` = "
            "any rest (visual separators `-.()` ignored)"
        ),
        number_patterns,
    )
    from_peers: tuple[str, ...] = setting(
        ..., "peers whose calls belong to this plan; the first matching plan wins", some, key="from"
    )
    max_calls: int = setting(
        0, "calls in progress in this plan at most (a trunk's capacity); 0 = no limit", not_negative
    )
    deny_numbers: tuple[str, ...] = setting(
        (),
        (
            "numbers this plan refuses with `403` and a Warning naming the pattern "
            "(`call_refused_denied_number`), checked before anything else the plan does: "
            'patterns as in `numbers`; one starting with `!` is an exception (`["1900*", '
            '"011*", "+*", "!+44*"]`: premium, international dialling and every `+` number '
            "but the UK's)"
        ),
        deny_patterns,
    )
    targets: tuple[str, ...] = setting(
        (),
        (
            'peers, in order; secured modes require targets with `transport = "tls"` '
            "(softphones: a TLS registration); softphones are rung by number, in parallel on "
            "every flow (not with `redirect`)"
        ),
        shown="required (none for `answer`)",
    )
    action: Action = setting(
        Action.PROXY,
        (
            "`proxy`, `redirect`, or `answer`: sipserver answers the call itself (see"
            " [the answering target](calls.md#the-answering-target))"
        ),
    )
    answer_after: float = setting(
        1.0, "answer: seconds of ringing (180) before the 200 OK", not_negative
    )
    answer_hangup_after: float = setting(
        0.0,
        (
            "`answer` only: seconds after the answer when sipserver hangs up with a BYE (0: "
            "the caller hangs up)"
        ),
        not_negative,
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
        "X-Peer-Identity", "header carrying the verified caller identity downstream", header_name
    )


@dataclass(frozen=True, slots=True)
class RegistrarSettings:
    min_expires: int = setting(
        60,
        ("shortest registration accepted; shorter gets `423 Interval Too Brief` + `Min-Expires`"),
        at_least(1),
    )
    max_expires: int = setting(
        3600, "longest registration granted; longer requests are cut to it", at_least(1)
    )
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
        (),
        (
            '`"IP:PORT"` DNS servers asked for targets\' NAPTR, SRV and A/AAAA records instead'
            " of `/etc/resolv.conf`"
        ),
        nameservers,
    )
    timeout: float = setting(
        5.0,
        ("seconds one target's whole lookup may take; longer is a failed lookup (a failover step)"),
        positive,
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
        None, "`IP:PORT` of the `/healthz` and `/metrics` listener; absent = off", ip_and_port
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
        shown="first listen address",
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
