"""docs/log-events.md, written from this table: every event the server logs, its level
and its fields. Tests check that every event name the code logs (a `log.<level>("name")` call
or an event class of `proxy/events.py`) has its row, and that every row names events the
code logs, so the page cannot drift from the code.

    python -m sipserver.server.log_reference > docs/log-events.md
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

from sipserver.proxy import events


@dataclass(frozen=True, slots=True)
class EventDoc:
    names: tuple[str, ...]  # events described together
    level: str  # one level, or one per name ("info / warning")
    fields: str  # Markdown: what the line says besides the bound context


INTRO = """\
# Log events

<!-- Written by `python -m sipserver.server.log_reference > docs/log-events.md` from
sipserver/server/log_reference.py; edit that table, not this page. -->

JSON lines (one event per thing that happened) when stdout is not a terminal; readable
console output on a terminal. Connection context (`transport`, `remote`, `connection_id`,
and on TLS `peer`, `peer_fqdn`, `peer_cert_thumbprint_sha256`) and `call_id` are bound to
every event, not formatted into strings. A JSON line starts with `timestamp` (UTC),
`level` and `event`, then the event's own fields, then the bound context in the order it
was bound, then `worker` (with several workers); a field without a value is left out, not
written as null, and one the event leaves empty is not filled from the context. Bytes that
are not UTF-8 are written escaped (`\\xff`). Thumbprints and serials are upper-case hex
without colons, serials as whole bytes (`0123…`, never `123…`): the form openssl, Windows
and Exchange show.
"""

EVENTS: tuple[EventDoc, ...] = (
    EventDoc(
        ("server_starting",),
        "info",
        "`fqdn`, `config`, `peers`, `core` (`compiled` or `pure`: the sans-IO core's build)",
    ),
    EventDoc(
        ("server_certificate_generated",),
        "info",
        "`path`, `key_path`, `key_type`, `fqdn`, certificate fields",
    ),
    EventDoc(
        ("server_certificate_selected",),
        "info",
        "`path`, `why`, `ekus`, `subject`, `issuer`, `serial`, `thumbprint_sha1`, `thumbprint_sha256`, `not_before`, `not_after`",
    ),
    EventDoc(
        ("server_certificate_skipped",),
        "warning",
        "`path`, `reason` (expired, key mismatch, no SAN for our FQDN, …)",
    ),
    EventDoc(
        ("server_certificate_unreadable",),
        "error",
        "`path`, `reason`: a certificate file (a PKCS#12 with a wrong password, most often) that cannot be opened",
    ),
    EventDoc(
        ("trust_anchor_loaded", "trust_anchors_missing"),
        "info / warning",
        "`subject`, `serial`, `thumbprint_sha1`, `not_after` / `trust_dir`, `consequence`",
    ),
    EventDoc(
        ("listener_started", "listener_unavailable"),
        "info / warning",
        "`transport`, `address`, `port`",
    ),
    EventDoc(
        ("server_ready",),
        "info",
        "`fqdn`, `listeners`, `peers`",
    ),
    EventDoc(
        ("tls_peer_accepted",),
        "info",
        "`peer`, `peer_fqdn`, `identity_source`, `tls_version`, `cipher`, `tls_session_resumed`, `peer_cert_*` (subject, issuer, serial, thumbprints, validity), `our_thumbprint_sha1`, `our_thumbprint_sha256`",
    ),
    EventDoc(
        ("tls_peer_refused",),
        "warning",
        "`reason`: `no_client_certificate`, `untrusted_chain`, `certificate_expired`, `certificate_not_yet_valid`, `certificate_revoked`, `certificate_wrong_purpose`, `not_on_allow_list`, `handshake_timeout`, `handshake_aborted`, `not_tls`, `tls_parameters_refused`, `peer_refused_our_certificate`, `handshake_failed`; `detail`; the peer's own (leaf) certificate as `peer_cert_*`, `presented_names`, `closest_fqdn`, `verify_error`, and `untrusted_issuer` when the chain it sent ends in a CA we do not trust",
    ),
    EventDoc(
        ("connection_opened", "connection_closed"),
        "info",
        "`reason`, `messages`, `seconds` on close",
    ),
    EventDoc(
        ("connection_refused",),
        "warning",
        "`reason` (which limit)",
    ),
    EventDoc(
        ("capture_dropped",),
        "warning",
        "`messages` (since the last line), `total`, `collector`: HEP copies not sent (queue full or collector down); calls were not delayed",
    ),
    EventDoc(
        ("tls_keylog_on", "tls_keylog_off", "tls_keylog_failed"),
        "warning / info / error",
        "`path`, `consequence` / (none) / `path`, `reason`",
    ),
    EventDoc(
        ("connection_evicted",),
        "warning",
        "`transport`, `remote`, `reason` (which budget was full: the address's share or the whole); once per address per `log.repeat_interval`",
    ),
    EventDoc(
        ("accept_failed", "accept_resumed"),
        "error / info",
        "`reason` (out of file descriptors or memory), `retry_in`: the listener tries again every that many seconds, new connections wait in the kernel's backlog meanwhile; logged once, then `accept_resumed` with `failed_attempts` and `seconds`",
    ),
    EventDoc(
        ("sip_request_answered",),
        "info (≥400: warning)",
        "`method`, `status`, `reason`, `transport`, `remote`, `peer`, `peer_fqdn`",
    ),
    EventDoc(
        ("no_dial_plan",),
        "warning",
        "as above; the Warning text in `reason`",
    ),
    EventDoc(
        ("call_redirected",),
        "info",
        "`dial_plan`, `security`, `target`, `target_fqdn`, `contact`, `status` 302, plus the request fields",
    ),
    EventDoc(
        (
            "call_refused_insecure_transport",
            "call_refused_insecure_media",
            "call_refused_no_target",
            "call_refused_denied_number",
            "call_limit_reached",
        ),
        "warning",
        "`dial_plan`, `security`, `status` (403 / 488 / 503 / 403 / 503), `reason` = the Warning"
        " text (for a limit: which, whose, and its value)",
    ),
    EventDoc(
        ("call_routed", "call_ended"),
        "info",
        "the canonical line per proxied call: `status`, `decision`, `dial_plan`, `security`, inbound `peer`, `peer_fqdn`, `transport`, `peer_cert_*` (subject, issuer, serial, thumbprints), `target`, `target_fqdn`, `target_transport`, `target_address`, `target_cert_*`, `our_thumbprint_sha1`, `attempts`, `failed_attempts`, `setup_ms`; `call_ended` for final statuses ≥ 300 (with `detail`)",
    ),
    EventDoc(
        ("call_attempt_failed",),
        "warning",
        "`target`, `reason`, `attempt`",
    ),
    EventDoc(
        (
            "registration_added",
            "registration_refreshed",
            "registration_replaced",
            "registration_removed",
            "registration_expired",
        ),
        "info",
        "a softphone binding: `peer`, `number`, `contact`, `transport`, `remote`, `expires`, `instance`, `reg_id`, `peer_cert_thumbprint_sha256`; `reason` when removed",
    ),
    EventDoc(
        ("call_answered",),
        "info",
        "a call the answering target took: `dial_plan`, `security`, `number`, `peer`, `peer_fqdn`, `transport`, `remote`, `peer_cert_*`, `our_thumbprint_sha1`, `media` (what the SDP answer accepted), `setup_ms`",
    ),
    EventDoc(
        ("answered_call_ended",),
        "info",
        "`dial_plan`, `ended_by` (`caller_bye`, `hangup_timer`, `longest_call`, `no_ack`, `cancelled`), `duration_s`",
    ),
    EventDoc(
        ("call_refused_media",),
        "warning",
        "an offer the answering target cannot answer (488), with why",
    ),
    EventDoc(
        ("in_dialog_request_routed", "in_dialog_request_failed"),
        "debug / info",
        "as `call_routed`, for BYE, re-INVITE, UPDATE, INFO … (at info only when it fails: one line per call at info)",
    ),
    EventDoc(
        ("server_certificate_expiring", "server_certificate_expired"),
        "warning / error",
        "`days_left` / `days_since`, `path`, certificate fields; once a UTC day",
    ),
    EventDoc(
        ("trust_anchor_expiring", "trust_anchor_expired"),
        "warning / error",
        "`days_left` / `days_since`, `subject`, `serial`, `thumbprint_sha1`, `not_after`, `affected_peers`",
    ),
    EventDoc(
        ("server_certificate_changed",),
        "info",
        "`previous_thumbprint_sha1`, `thumbprint_sha1`, `path`",
    ),
    EventDoc(
        ("crl_loaded", "crl_unusable", "crl_stale"),
        "info / error / warning",
        "`path`, `issuer`, `revoked`, `next_update` / `reason`",
    ),
    EventDoc(
        ("tls_target_accepted",),
        "info",
        "`target`, `target_fqdn`, `tls_version`, `cipher`, `tls_session_resumed` (always false: our legs do not resume), `target_cert_*`",
    ),
    EventDoc(
        ("outbound_connection_opened", "outbound_connection_failed"),
        "info / warning",
        "`target`, `seconds`; `reason` (connection refused, connect timeout, `target_name_mismatch: …`, `untrusted_chain: …`)",
    ),
    EventDoc(
        ("target_located", "target_lookup_failed"),
        "info / warning",
        "`fqdn`, `transport`; `how` (`naptr+srv`, `srv`, `a`), `destinations` (in the order tried), `ttl`, `naptr_failed` (why NAPTR was skipped) / `reason`",
    ),
    EventDoc(
        ("target_health_changed",),
        "warning (down) / info (up)",
        "`target`, `target_fqdn`, `state`, `reason`",
    ),
    EventDoc(
        ("security_violation_media_answer",),
        "error",
        "`dial_plan`, `target`, `status`, `problems`",
    ),
    EventDoc(
        ("sip_request_refused",),
        "warning",
        "`reason: unknown_source`, `action` (403 / dropped)",
    ),
    EventDoc(
        ("sip_request_malformed", "sip_response_malformed"),
        "warning",
        "`reason`, `status`, `action` (answered / dropped …)",
    ),
    EventDoc(
        ("sip_framing_lost",),
        "warning",
        "`reason`, `status`",
    ),
    EventDoc(
        ("sip_datagram_too_large",),
        "warning",
        "`limit`",
    ),
    EventDoc(
        ("sip_transaction_timeout",),
        "warning",
        "`timer` (H), `method`",
    ),
    EventDoc(
        ("config_reloaded", "config_reload_failed", "config_reload_partial"),
        "info / error / warning",
        "`config`, `why` (SIGHUP or the files that changed) / `error`, `key`, `kept` / `reason`",
    ),
    EventDoc(
        ("admin_listener_started",),
        "info",
        "`address`, `port`",
    ),
    EventDoc(
        ("peer_certificate_expiring",),
        "warning, once a UTC day per peer",
        "`peer`, `peer_fqdn`, `days_left`, `expires`, `expires_by` (certificate or its trust anchor), `thumbprint_sha1`, `serial`, `issuer`",
    ),
    EventDoc(
        ("peer_certificate_changed",),
        "info (warning when the issuer changed)",
        "`peer`, `peer_fqdn`, `issuer_changed`, `old_`/`new_` `issuer`, `serial`, `thumbprint_sha1`, `thumbprint_sha256`, `not_after`, `old_last_seen`",
    ),
    EventDoc(
        ("peer_certificate_expired",),
        "error, once a UTC day while the peer keeps trying",
        "`peer`, `peer_fqdn`, `reason`, `days_since`, `thumbprint_sha1`, `serial`, `issuer`, `not_after`, `fix`",
    ),
    EventDoc(
        ("peer_table_loaded", "peer_table_write_failed"),
        "info / warning",
        "`path`, `peers` / `path`, `reason`",
    ),
    EventDoc(
        ("refusals_repeated",),
        "warning",
        "`refusal` (the event), `source` (address), `reason`, `count` (refusals not logged one by one), `seconds`",
    ),
    EventDoc(
        ("server_overloaded", "server_overload_ended"),
        "warning / info",
        "`busy`, `limit`, `action` / `seconds`, `calls_shed`, `peak_busy`, `busy`",
    ),
    EventDoc(
        ("memory_swept",),
        "info",
        "the garbage collector's full pass, hourly, put off while the loop is busy (by an "
        "hour at most); the objects that survive a young pass are kept out of the other "
        "passes until then: `collected` (objects in cycles freed), `frozen_before`, "
        "`frozen_after` (objects kept out), `pause_ms` (the loop stood still that long)",
    ),
    EventDoc(
        ("call_shed",),
        "debug",
        "a new call refused with 503 + Retry-After in overload; the request fields",
    ),
    EventDoc(
        ("server_draining", "server_drained", "server_grace_expired", "server_stopping_now"),
        "info / info / warning / warning",
        "`signal`, `grace_seconds`, `busy` / `seconds`, `unfinished`",
    ),
    EventDoc(
        ("server_stopped", "server_start_failed"),
        "info / error",
        "(none) / `reason` and the configuration `key` it concerns (`server.sip_port`, `server.tls_port`, `server.addresses`, `admin.address`, `tls.certificate_dir`); `sipserver run` then says the same in one line on stderr (`sipserver: cannot start: …`, never a traceback) and exits 2",
    ),
    EventDoc(
        ("worker_ready", "worker_exited", "workers_reloading", "workers_stopping"),
        "info / error / info / info",
        "with `server.workers` > 1: a worker is up (as `server_ready`) / died and was restarted (`worker_index`, `returncode`) / the supervisor forwards SIGHUP / SIGTERM",
    ),
    EventDoc(
        ("cluster_sharing_bindings", "cluster_bindings_published", "cluster_bindings_written"),
        "info / info / debug",
        "bindings are shared (`store`, `owner`, `hop`) / every binding we hold published (at start, after the store was lost) / a batch of changes written",
    ),
    EventDoc(
        ("cluster_store_unavailable", "cluster_store_restored", "cluster_bindings_dropped"),
        "warning / info / warning",
        "the binding store failed (`reason`) / answers again (`seconds`) / a dead process's bindings removed (`owners`, `number`)",
    ),
    EventDoc(
        ("call_counts_shared", "call_counts_unshared", "call_counts_elsewhere"),
        "info / warning / debug",
        "call limits hold server-wide (`store`, `processes`) / the store failed: each process counts alone (`reason`, `effect`) / the other processes' calls in progress changed (`processes`, `active`, `by_peer`)",
    ),
    EventDoc(
        ("worker_replaced", "supervisor_gone"),
        "info / error",
        "a dead worker's replacement serves (`worker_index`, `seconds`, `restarts`) / a worker's supervisor was killed: it drains and exits",
    ),
    EventDoc(
        ("internal_error",),
        "error",
        "traceback (a bug: the connection or datagram is dropped, the server carries on)",
    ),
    EventDoc(
        ("call_attempt_started",),
        "debug",
        "a try of one target begins: `target`, `attempt`, `method`, `remote`",
    ),
    EventDoc(
        ("call_failed",),
        "info",
        "a call we were proxying ended with our own final answer (no target left, cancelled): the request fields and `status`, `reason`",
    ),
    EventDoc(
        ("sip_response_unmatched",),
        "debug",
        "a response that matches no transaction of ours (a late retransmission): `status`, `transport`, `remote`",
    ),
    EventDoc(
        ("target_health_checked",),
        "debug",
        "one OPTIONS health check of a target: `target`, `ok`, `reason`",
    ),
    EventDoc(
        ("transmit_dropped",),
        "debug",
        "a message for a connection that closed meanwhile: `reason`, `remote`, `transport`",
    ),
    EventDoc(
        ("udp_receive_error", "udp_send_failed"),
        "debug / warning",
        "the kernel refused a UDP read (`reason`) / a datagram could not be sent (`remote`, `reason`)",
    ),
    EventDoc(
        ("trust_anchor_unreadable", "crl_unreadable"),
        "warning",
        "a file in `tls.trust_dir` is not a CA certificate / CRL we can read: `path`, `reason` (the others load)",
    ),
    EventDoc(
        ("server_certificate_unusable", "server_certificate_change_failed"),
        "error",
        "the certificate in use expired and no other is usable (`reason`, `path`) / a renewed certificate could not be installed (`error`): the one in use stays",
    ),
    EventDoc(
        ("capture_send_failed",),
        "debug",
        "a HEP packet could not be sent: `collector`, `reason` (counted in `sipserver_capture_total{result}`)",
    ),
)


def page() -> str:
    rows = [
        "| "
        + " / ".join(f"`{name}`" for name in event.names)
        + f" | {event.level} | "
        + event.fields
        + " |\n"
        for event in EVENTS
    ]
    return (
        INTRO
        + "\n| Event | Level | Fields (besides context) |\n|---|---|---|\n"
        + "".join(rows)
        + core_events()
    )


def core_events() -> str:
    """The pure core's events, straight from their classes in `proxy/events.py`: what each
    is, the name it is logged under and every field it carries."""
    lines = [
        "\n## The core's events, field by field\n\n"
        "Written from the event classes in `sipserver/proxy/events.py`. A certificate field\n"
        "(`peer_cert`, `target_cert`) is logged as its `_subject`, `_issuer`, `_serial`,\n"
        "`_thumbprint_sha1`, `_thumbprint_sha256`, `_not_before` and `_not_after`.\n\n"
        "| Class | Logged as | What it is | Fields |\n|---|---|---|---|\n"
    ]
    for cls in event_classes():
        name = cls.__dict__.get("name")
        logged = f"`{name}`" if name else "composed from its fields (see the table above)"
        doc = " ".join((cls.__doc__ or "").split()).replace("|", "\\|")
        fields = ", ".join(
            f"`{spec.name}`" for spec in dataclasses.fields(cls) if spec.name != "call_id"
        )
        lines.append(f"| `{cls.__name__}` | {logged} | {doc} | {fields} |\n")
    return "".join(lines)


def event_classes() -> list[type[events.Event]]:
    found = [
        cls
        for cls in vars(events).values()
        if isinstance(cls, type)
        and issubclass(cls, events.Event)
        and cls is not events.Event
        and cls.__module__ == events.__name__
    ]
    return sorted(found, key=lambda cls: inspect.getsourcelines(cls)[1])


if __name__ == "__main__":
    print(page(), end="")
