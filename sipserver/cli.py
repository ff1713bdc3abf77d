"""`sipserver run | check-config`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog
import trio

from sipserver import __version__
from sipserver.config import Config, ConfigError, is_fqdn, load_config
from sipserver.log import configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipserver", description="Mutual-TLS SIP signalling server"
    )
    parser.add_argument("--version", action="version", version=f"sipserver {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="run the server (embedded default configuration without --config)"
    )
    run.add_argument("--config", "-c", type=Path, help="TOML configuration file")
    run.add_argument(
        "--sip-port",
        type=int,
        help="UDP and TCP port (overrides server.sip_port; 0 = any free port)",
    )
    run.add_argument(
        "--tls-port", type=int, help="TLS port (overrides server.tls_port; 0 = any free port)"
    )
    run.add_argument(
        "--address", action="append", help="listen address (repeatable; overrides server.addresses)"
    )
    run.add_argument("--fqdn", help="our FQDN (overrides server.fqdn)")
    run.add_argument(
        "--log-format", choices=["auto", "json", "console"], help="overrides log.format"
    )
    run.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="overrides log.level"
    )

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("path", type=Path)
    return parser


def _overrides(args: argparse.Namespace) -> tuple[dict[str, object], dict[str, object]]:
    server: dict[str, object] = {}
    if args.sip_port is not None:
        server["sip_port"] = args.sip_port
    if args.tls_port is not None:
        server["tls_port"] = args.tls_port
    if args.address:
        server["addresses"] = tuple(args.address)
    if args.fqdn:
        server["fqdn"] = args.fqdn.lower().rstrip(".")
    log: dict[str, object] = {}
    if args.log_format:
        log["format"] = args.log_format
    if args.log_level:
        log["level"] = args.log_level
    return server, log


def _run(args: argparse.Namespace) -> int:
    from sipserver.server import Server, StartupError

    server_over, log_over = _overrides(args)
    for name in ("sip_port", "tls_port"):
        value = server_over.get(name)
        if isinstance(value, int) and not 0 <= value <= 65535:
            print(f"sipserver: --{name.replace('_', '-')} {value} is not a port", file=sys.stderr)
            return 2
    if isinstance(server_over.get("fqdn"), str) and not is_fqdn(str(server_over["fqdn"])):
        print(f"sipserver: --fqdn {server_over['fqdn']!r} is not a valid FQDN", file=sys.stderr)
        return 2

    def apply(config: Config) -> Config:
        return dataclasses.replace(
            config,
            server=dataclasses.replace(config.server, **server_over),  # type: ignore[arg-type]
            log=dataclasses.replace(config.log, **log_over),  # type: ignore[arg-type]
        )

    try:
        config = apply(load_config(args.config))
    except ConfigError as exc:
        print(f"sipserver: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log.level, config.log.format)
    server = Server(config, config_path=args.config, overrides=apply)
    try:
        trio.run(server.run)
    except StartupError as exc:
        structlog.get_logger("sipserver").error("server_start_failed", error=str(exc))
        print(f"sipserver: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.path}: OK — fqdn {config.server.fqdn}, {len(config.peers)} peer(s), {len(config.dial_plans)} dial plan(s), "
        f"SIP port {config.server.sip_port}, TLS port {config.server.tls_port}, "
        f"certificates in {config.tls.certificate_dir}, trust anchors in {config.tls.trust_dir}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    return _check_config(args)
