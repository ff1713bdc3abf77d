"""`sipserver certs show | peers | export | lab-pki`."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sipserver.certstore import CertificateSetupError, load_candidates, pkcs12_password
from sipserver.config.schema import Config
from sipserver.pki.lab_pki import Pair, make_lab_pki
from sipserver.pki.select import choose_certificate, rank_reason


def _rows(config: Config, now: dt.datetime) -> list[dict[str, Any]]:
    candidates, unreadable = load_candidates(config.tls.certificate_dir, pkcs12_password(config))
    selection = choose_certificate(candidates, config.server.fqdn, now)
    rows: list[dict[str, Any]] = []
    for index, candidate in enumerate(selection.ranked):
        rows.append(
            {
                "status": "in use" if index == 0 else f"usable (rank {index + 1})",
                "why": rank_reason(selection.ranked, index, now),
                "candidate": candidate,
            }
        )
    for skipped in selection.skipped:
        rows.append({"status": "not usable", "why": skipped.reason, "candidate": skipped.candidate})
    out = []
    for row in rows:
        c = row["candidate"]
        info = c.info
        out.append(
            {
                "status": row["status"],
                "why": row["why"],
                "path": c.path,
                "subject": info.subject,
                "issuer": info.issuer,
                "serial": info.serial,
                "thumbprint_sha1": info.thumbprint_sha1,
                "thumbprint_sha256": info.thumbprint_sha256,
                "not_before": info.not_before.isoformat(),
                "not_after": info.not_after.isoformat(),
                "days_left": round(info.days_left(now), 1),
                "ekus": list(info.ekus),
                "san": list(info.presented_names),
                "self_signed": info.self_signed,
            }
        )
    out += [{"status": "not usable", "why": why, "path": path} for path, why in unreadable]
    return out


def _source(config: Config) -> str:
    if config.source == "<embedded default>":
        return "the embedded default (no --config given); its folders are under the state folder"
    return str(Path(config.source).resolve())


def show(config: Config, as_json: bool) -> int:
    try:
        rows = _rows(config, dt.datetime.now(dt.UTC))
    except CertificateSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(
            json.dumps(
                {
                    "config": config.source,
                    "fqdn": config.server.fqdn,
                    "folder": str(config.tls.certificate_dir),
                    "trust_dir": str(config.tls.trust_dir),
                    "certificates": rows,
                },
                indent=2,
            )
        )
        return 0
    print(f"configuration: {_source(config)}")
    print(f"trust anchors: {config.tls.trust_dir}")
    print(
        f"certificates in {config.tls.certificate_dir} for {config.server.fqdn}, "
        "in selection order, and why:"
    )
    if not rows:
        print("  (none: sipserver run will generate a self-signed certificate)")
    for row in rows:
        print(f"\n  [{row['status']}] {row['path']}")
        print(f"    {'why':<8} {row['why']}")
        for label, key in (
            ("subject", "subject"),
            ("issuer", "issuer"),
            ("serial", "serial"),
            ("SHA-1", "thumbprint_sha1"),
            ("SHA-256", "thumbprint_sha256"),
            ("valid", None),
            ("EKU", "ekus"),
            ("names", "san"),
        ):
            if key is None and "not_before" in row:
                print(
                    f"    {'valid':<8} {row['not_before']} .. {row['not_after']} ({row['days_left']} days left)"
                )
            elif key in row:
                value = ", ".join(row[key]) if isinstance(row[key], list) else row[key]
                print(f"    {label:<8} {value}")
    return 0 if any(r["status"] == "in use" for r in rows) else 1


def export(config: Config, der: bool, out: Path | None) -> int:
    try:
        candidates, _ = load_candidates(config.tls.certificate_dir, pkcs12_password(config))
    except CertificateSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    selection = choose_certificate(candidates, config.server.fqdn, dt.datetime.now(dt.UTC))
    if selection.chosen is None:
        print(
            f"error: no usable certificate in {config.tls.certificate_dir} ({selection.reason})",
            file=sys.stderr,
        )
        return 1
    cert: x509.Certificate = selection.chosen.chain[0]
    data = cert.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM)
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        out.write_bytes(data)
        info = selection.chosen.info
        print(
            f"wrote {out}: {info.subject}, serial {info.serial}, SHA-1 {info.thumbprint_sha1}",
            file=sys.stderr,
        )
    return 0


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def write_lab_pki(out: Path, server: str, peers: list[str]) -> bool:
    """A lab CA, our certificate and one per peer, laid out as a lab config expects. A lab
    CA already in `out` signs the new certificates (every earlier one stays trusted), and
    a server certificate already there is kept. True when the CA was already there."""
    ca_cert, ca_key = out / "ca" / "ca.crt", out / "ca" / "ca.key"
    existing = Pair("ca", ca_cert.read_bytes(), ca_key.read_bytes()) if ca_key.exists() else None
    server_cert = out / "sipserver" / "server" / f"{server}.crt"
    keep_server = existing is not None and server_cert.exists()
    ca, leaves = make_lab_pki(
        None if keep_server else server, peers, dt.datetime.now(dt.UTC), existing_ca=existing
    )
    _write(ca_cert, ca.cert_pem)
    _write(ca_key, ca.key_pem, private=True)
    _write(out / "sipserver" / "trust" / "ca.crt", ca.cert_pem)
    peer_pairs = leaves if keep_server else leaves[1:]
    if not keep_server:
        server_pair = leaves[0]
        _write(server_cert, server_pair.cert_pem)
        _write(server_cert.with_suffix(".key"), server_pair.key_pem, private=True)
    for pair in peer_pairs:
        folder = out / "peers" / pair.name
        _write(folder / f"{pair.name}.crt", pair.cert_pem)
        _write(folder / f"{pair.name}.key", pair.key_pem, private=True)
        _write(folder / f"{pair.name}.pem", pair.cert_pem + pair.key_pem, private=True)
        _write(folder / "ca.crt", ca.cert_pem)
    return existing is not None


def lab_pki(out: Path, server: str, peers: list[str]) -> int:
    try:
        reused = write_lab_pki(out, server, peers)
    except (OSError, ValueError) as exc:
        print(f"sipserver: cannot use the lab CA in {out / 'ca'}: {exc}", file=sys.stderr)
        return 1
    how = "added to the existing lab CA in" if reused else "lab PKI written to"
    print(f"""{how} {out}

  sipserver:  a config file in {out} (paths in it are relative to the file) says
                [server] fqdn = "{server}"
                [tls] certificate_dir = "sipserver/server"
                      trust_dir       = "sipserver/trust"
              and one [[peer]] per FQDN below; from anywhere else use
                certificate_dir = "{(out / "sipserver" / "server").resolve()}"
                trust_dir       = "{(out / "sipserver" / "trust").resolve()}"
  each peer:  peers/<fqdn>/<fqdn>.crt + .key (or .pem: both in one file, e.g. for stunnel or baresip)
              as its certificate, and peers/<fqdn>/ca.crt in its trust store.
  peers:      {", ".join(peers) or "(none)"}
  keep ca/ca.key away from the lab machines: it can sign certificates every peer trusts.
  a whole lab (config, baresip, stunnel, sipp) in one step: sipserver lab --out DIR""")
    return 0


def peer_rows(config: Config, now: dt.datetime) -> list[dict[str, Any]]:
    """One row per allow-listed peer, in config order: its last certificate or never seen."""
    from sipserver.server.peer_watch import load_book

    book = load_book(config.tls.peer_table)
    rows: list[dict[str, Any]] = []
    for peer in config.peers:
        record = book.records.get(peer.name)
        if record is None or record.fqdn != peer.fqdn:
            rows.append({"peer": peer.name, "fqdn": peer.fqdn, "status": "never seen"})
            continue
        days = record.days_left(now)
        warn = config.tls.peer_expiry_warning_days
        status = "expired" if days <= 0 else "expiring" if days <= warn else "ok"
        rows.append(
            {
                "peer": peer.name,
                "fqdn": peer.fqdn,
                "status": status,
                "days_left": round(days, 1),
                **record.to_json(),
            }
        )
    return rows


def peers(config: Config, as_json: bool) -> int:
    now = dt.datetime.now(dt.UTC)
    rows = peer_rows(config, now)
    if as_json:
        print(
            json.dumps(
                {"config": config.source, "table": str(config.tls.peer_table), "peers": rows},
                indent=2,
            )
        )
        return 0
    print(f"configuration: {_source(config)}")
    print(f"peer table: {config.tls.peer_table}")
    for row in rows:
        if row["status"] == "never seen":
            print(f"{row['peer']} ({row['fqdn']}): never seen")
            continue
        print(
            f"{row['peer']} ({row['fqdn']}): {row['status']}, {row['days_left']} days left "
            f"(until {row['not_after']}{', trust anchor first' if row['anchor_not_after'] and row['anchor_not_after'] < row['not_after'] else ''})\n"
            f"  subject {row['subject']}; issuer {row['issuer']}; serial {row['serial']}\n"
            f"  SHA-1 {row['thumbprint_sha1']}; matched {row['matched']}; {row['direction']}\n"
            f"  first seen {row['first_seen']}, last seen {row['last_seen']}"
        )
    return 0
