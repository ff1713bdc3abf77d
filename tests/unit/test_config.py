"""Configuration files: loading, errors that name key and line, and the declaration of
every key (sipserver/config/schema.py) kept in step with its documentation."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from sipserver.commands.main import main
from sipserver.config.loader import ConfigError, load_config, parse_config
from sipserver.config.schema import SECTIONS

REPO = Path(__file__).resolve().parents[2]


def test_embedded_default_loads() -> None:
    config = load_config(None)
    assert config.server.sip_port == 5060 and config.server.tls_port == 5061
    assert config.server.addresses == ("0.0.0.0", "::")
    assert config.tls.min_version == "1.2"
    assert [p.name for p in config.peers] == ["local"]


def test_documented_example_loads_and_resolves_paths_next_to_the_file() -> None:
    config = load_config(REPO / "examples" / "sipserver.toml")
    assert config.server.fqdn == "sip.example.test"
    assert config.tls.certificate_dir == REPO / "certs" / "server"
    assert [str(a) for a in config.peers[0].addresses] == ["192.0.2.10/32", "2001:db8::/64"]
    assert config.peers[1].kind == "pbx"


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="test.toml")
    return info.value


def test_unknown_key_names_key_path_line_and_suggestion() -> None:
    e = error('[server]\nfqdn = "a.test"\n\n[limits]\nmax_conections = 5\n')
    assert (e.key, e.line) == ("limits.max_conections", 5)
    assert "did you mean 'max_connections'" in str(e)
    assert str(e).startswith("test.toml:5: limits.max_conections")


def test_wrong_type_in_second_peer_points_at_its_line() -> None:
    text = (
        '[server]\nfqdn = "a.test"\n[[peer]]\nname = "a"\nfqdn = "a.example.test"\n'
        '[[peer]]\nname = "b"\nfqdn = "b.example.test"\nallow_wildcard = "yes"\n'
    )
    e = error(text)
    assert (e.key, e.line) == ("peer[1].allow_wildcard", 9)
    assert "must be true or false" in e.message


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[server]\nsip_port = 70000\n", "server.sip_port", "not a port"),
        ('[server]\nfqdn = "not a name"\n', "server.fqdn", "not a valid FQDN"),
        ('[server]\nunknown_source = "ignore"\n', "server.unknown_source", "reject, drop"),
        ('[server]\naddresses = ["10.0.0.300"]\n', "server.addresses", "not an IP address"),
        ('[tls]\nmin_version = "1.1"\n', "tls.min_version", "1.2, 1.3"),
        ("[tls]\nhandshake_timeout = 0\n", "tls.handshake_timeout", "greater than 0"),
        ('[[peer]]\nname = "x"\n', "peer[0].fqdn", "is required"),
        ('[[peer]]\nname = "x"\nfqdn = "x.test"\nkind = "sbc"\n', "peer[0].kind", "gateway, pbx"),
        (
            '[[peer]]\nname = "x"\nfqdn = "x.test"\naddresses = ["nope"]\n',
            "peer[0].addresses",
            "not an IP",
        ),
        (
            '[[peer]]\nname = "x"\nfqdn = "x.test"\n[[peer]]\nname = "x"\nfqdn = "y.test"\n',
            "peer[1].name",
            "already used",
        ),
        ("[limits]\nidle_timeout = true\n", "limits.idle_timeout", "not a boolean"),
    ],
)
def test_each_bad_value_is_named(text: str, key: str, fragment: str) -> None:
    e = error(text)
    assert e.key == key
    assert fragment in e.message
    assert e.line is not None


def test_toml_syntax_error_has_a_line() -> None:
    e = error('[server]\nfqdn = "a.test"\nsip_port = = 1\n')
    assert e.line == 3 and "TOML syntax error" in e.message


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[server]\nfqdn = "sip.example.test"\n')
    assert main(["check-config", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nfqdn = "sip.example.test"\nsip_port = "5060"\n')
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0  # one clear line
    assert f"{bad}:3: server.sip_port: must be an integer" in err
    assert main(["check-config", str(tmp_path / "missing.toml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def every_key() -> list[str]:
    keys = []
    for section, (cls, _) in SECTIONS.items():
        for spec in dataclasses.fields(cls):
            keys.append(f"{section}.{spec.metadata.get('key') or spec.name}")
    return keys


@pytest.mark.parametrize("key", every_key())
def test_every_declared_key_is_documented_and_has_a_meaning(key: str) -> None:
    """Keys are declared once, in sipserver/config/schema.py (docs/configuration.md is
    written from it); the commented example configuration must follow."""
    section, name = key.split(".")
    cls = SECTIONS[section][0]
    spec = next(f for f in dataclasses.fields(cls) if (f.metadata.get("key") or f.name) == name)
    assert spec.metadata.get("doc"), f"{key} has no doc in its declaration"
    example = (REPO / "examples" / "sipserver.toml").read_text()
    assert re.search(rf"^#?\s*{re.escape(name)}\s*=", example, re.M), f"{key} not in the example"


def test_the_documented_example_passes_check_config_in_a_fresh_clone() -> None:
    """examples/sipserver.toml says to check it with check-config: that must succeed."""
    assert main(["check-config", str(REPO / "examples" / "sipserver.toml")]) == 0
