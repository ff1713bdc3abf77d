"""Reading the certificate folder: PEM pairs, combined PEM, DER, PKCS#12 with a password
from a file or the environment, and the reasons files are skipped."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

from sipserver.certstore import (
    CertificateSetupError,
    load_candidates,
    pkcs12_password,
    prepare_credentials,
    write_generated,
)
from sipserver.config.loader import parse_config
from tests.certs import NOW, make_ca, make_leaf

CA = make_ca()


def _p12(path: Path, password: bytes, dns: str = "sip.example.test") -> None:
    leaf = make_leaf(CA, dns=[dns])
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"sip", leaf.key, leaf.cert, [CA.cert], BestAvailableEncryption(password)
        )
    )


def test_folder_with_every_format(tmp_path: Path) -> None:
    make_leaf(CA, dns=["sip.example.test"]).write_pair(tmp_path, "pair")
    make_leaf(CA, dns=["sip.example.test"]).write_combined(tmp_path / "combined.pem")
    (tmp_path / "nokey.crt").write_bytes(make_leaf(CA, dns=["x.test"]).cert_pem)
    (tmp_path / "junk.pem").write_bytes(b"not a certificate")
    _p12(tmp_path / "server.pfx", b"s3cret")
    candidates, unreadable = load_candidates(tmp_path, b"s3cret")
    names = sorted(Path(c.path).name for c in candidates)
    assert names == ["combined.pem", "nokey.crt", "pair.crt", "server.pfx"]
    pfx = next(c for c in candidates if c.path.endswith(".pfx"))
    assert pfx.key is not None and len(pfx.chain) == 2
    assert [Path(p).name for p, _ in unreadable] == ["junk.pem"]
    _, wrong = load_candidates(tmp_path, b"wrong")
    assert any(p.endswith("server.pfx") and "PKCS#12 cannot be opened" in why for p, why in wrong)


def test_pkcs12_password_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    by_file = parse_config(
        f'[server]\nfqdn = "sip.example.test"\n[tls]\npkcs12_password_file = "{tmp_path / "pw"}"\n'
    )
    assert pkcs12_password(by_file) == b"s3cret"
    monkeypatch.setenv("SIPSERVER_P12", "from-env")
    by_env = parse_config(
        '[server]\nfqdn = "sip.example.test"\n[tls]\npkcs12_password_env = "SIPSERVER_P12"\n'
    )
    assert pkcs12_password(by_env) == b"from-env"
    missing = parse_config(
        f'[server]\nfqdn = "sip.example.test"\n[tls]\npkcs12_password_file = "{tmp_path / "nope"}"\n'
    )
    with pytest.raises(CertificateSetupError, match="pkcs12_password_file"):
        pkcs12_password(missing)


def test_a_pfx_is_selected_when_it_is_the_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certs, trust = tmp_path / "server", tmp_path / "trust"
    certs.mkdir()
    trust.mkdir()
    _p12(certs / "server.p12", b"pw")
    make_leaf(None, dns=["sip.example.test"]).write_pair(certs, "selfsigned")
    monkeypatch.setenv("P12PW", "pw")
    config = parse_config(
        f'[server]\nfqdn = "sip.example.test"\n[tls]\ncertificate_dir = "{certs}"\n'
        f'trust_dir = "{trust}"\npkcs12_password_env = "P12PW"\n'
    )
    chosen = prepare_credentials(config, NOW).certificate
    assert chosen.path.endswith("server.p12") and not chosen.info.self_signed


def test_each_skipped_certificate_is_reported_once_across_reloads(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    certs, trust = tmp_path / "server", tmp_path / "trust"
    make_leaf(CA, dns=["sip.example.test"]).write_pair(certs, "good")
    make_leaf(CA, dns=["other.example.test"]).write_pair(certs, "wrong-name")
    trust.mkdir()
    config = parse_config(
        f'[server]\nfqdn = "sip.example.test"\n[tls]\ncertificate_dir = "{certs}"\ntrust_dir = "{trust}"\n'
    )
    reported: set[tuple[str, str, str]] = set()
    with capture_logs() as logs:
        for _ in range(3):
            prepare_credentials(config, NOW, reported)
    skipped = [e for e in logs if e["event"] == "server_certificate_skipped"]
    assert len(skipped) == 1 and skipped[0]["path"].endswith("wrong-name.crt")
    assert len([e for e in logs if e["event"] == "server_certificate_selected"]) == 3


def test_generated_certificates_keep_the_whole_fqdn_in_their_file_names(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    first = write_generated(tmp_path, "sip.example.test", now, "ec-p256")
    second = write_generated(tmp_path, "sip.example.org", now, "ec-p256")
    assert first.name == "selfsigned-sip.example.test.crt"
    assert second.name == "selfsigned-sip.example.org.crt"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "selfsigned-sip.example.org.crt",
        "selfsigned-sip.example.org.key",
        "selfsigned-sip.example.test.crt",
        "selfsigned-sip.example.test.key",
    ]
    candidates, unreadable = load_candidates(tmp_path)
    assert not unreadable and all(c.key is not None for c in candidates)


def test_a_pkcs12_with_a_wrong_password_is_an_error_naming_the_file(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    certs, trust = tmp_path / "server", tmp_path / "trust"
    certs.mkdir()
    trust.mkdir()
    _p12(certs / "server.pfx", b"right")
    (tmp_path / "password").write_text("wrong\n")
    config = parse_config(
        f'[server]\nfqdn = "sip.example.test"\n[tls]\ncertificate_dir = "{certs}"\n'
        f'trust_dir = "{trust}"\npkcs12_password_file = "{tmp_path / "password"}"\n'
    )
    with capture_logs() as logs:
        prepare_credentials(config, NOW, set())
    errors = [e for e in logs if e["event"] == "server_certificate_unreadable"]
    assert errors and errors[0]["log_level"] == "error"
    assert errors[0]["path"].endswith("server.pfx") and "PKCS#12" in errors[0]["reason"]


def test_check_config_fails_on_missing_folders_and_unreadable_certificates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sipserver.commands.main import main

    config = tmp_path / "sipserver.toml"
    config.write_text(
        '[server]\nfqdn = "sip.example.test"\n[tls]\ncertificate_dir = "missing-certs"\n'
        'trust_dir = "missing-trust"\n'
    )
    assert main(["check-config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "tls.certificate_dir: folder" in err and "missing-certs does not exist" in err
    assert "tls.trust_dir: folder" in err
    (tmp_path / "missing-certs").mkdir()
    (tmp_path / "missing-trust").mkdir()
    _p12(tmp_path / "missing-certs" / "server.pfx", b"s3cret")
    assert main(["check-config", str(config)]) == 1
    assert "server.pfx: PKCS#12 cannot be opened" in capsys.readouterr().err
