"""`sipserver run | check-config`."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import trio

from sipserver import __version__
from sipserver.build import core_build
from sipserver.config.checks import is_fqdn
from sipserver.config.loader import ConfigError, load_config
from sipserver.config.schema import Config
from sipserver.log import configure_logging

if TYPE_CHECKING:
    from sipserver.server import StartupError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipserver", description="Mutual-TLS SIP signalling server"
    )
    parser.add_argument(
        "--version", action="version", version=f"sipserver {__version__} ({core_build()} core)"
    )
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
    # Set by the supervisor for each of server.workers processes; not for people.
    run.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    run.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    run.add_argument("--admin-socket", help=argparse.SUPPRESS)
    run.add_argument("--shared-store", help=argparse.SUPPRESS)  # the supervisor's, for workers
    run.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="overrides log.level"
    )

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("path", type=Path)

    certs = sub.add_parser("certs", help="the server's certificates")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    show = certs_sub.add_parser(
        "show", help="every certificate in certificate_dir, in selection order"
    )
    show.add_argument("--config", "-c", type=Path)
    show.add_argument("--json", action="store_true", help="JSON instead of a table")
    export = certs_sub.add_parser(
        "export", help="the certificate in use, for gateways' trust stores"
    )
    export.add_argument("--config", "-c", type=Path)
    export.add_argument("--der", action="store_true", help="DER instead of PEM")
    export.add_argument("--out", type=Path, help="file to write (default: standard output)")
    peers = certs_sub.add_parser(
        "peers", help="every allow-listed peer's last certificate, days to expiry, last seen"
    )
    peers.add_argument("--config", "-c", type=Path)
    peers.add_argument("--json", action="store_true")
    lab = certs_sub.add_parser(
        "lab-pki", help="a CA, a server certificate and one per peer, for an interop lab"
    )
    lab.add_argument("--out", type=Path, required=True)
    lab.add_argument("--server", required=True, help="our FQDN")
    lab.add_argument("--peer", action="append", default=[], help="a peer FQDN (repeatable)")

    lab_cmd = sub.add_parser(
        "lab",
        help="write a complete interop lab: PKI, config with answering numbers, "
        "baresip, stunnel and sipp set-ups",
    )
    lab_cmd.add_argument("--out", type=Path, required=True, help="folder to write the lab into")
    lab_cmd.add_argument("--fqdn", default="sip.example.test", help="our FQDN in the lab")
    lab_cmd.add_argument("--sip-port", type=int, default=5060)
    lab_cmd.add_argument("--tls-port", type=int, default=5061)
    lab_cmd.add_argument(
        "--phone-port",
        type=int,
        default=5080,
        help="baresip's SIP port (its TLS listener takes the next one)",
    )
    lab_cmd.add_argument(
        "--tunnel-port", type=int, default=5090, help="stunnel's plain-TCP port (as gw1)"
    )
    lab_cmd.add_argument(
        "--pbx-port",
        type=int,
        default=5095,
        help="stunnel's mutual-TLS port as pbx1 (its sipp listens on the next one)",
    )

    ping = sub.add_parser("ping", help="send OPTIONS and report status, round trip and certificate")
    ping.add_argument("uri", help="sip:HOST[:PORT] (sips: or --tls for TLS)")
    ping.add_argument("--tls", action="store_true", help="over TLS (default port 5061)")
    ping.add_argument("--tcp", action="store_true", help="over TCP")
    ping.add_argument("--cert", help="client certificate (PEM; may include the key)")
    ping.add_argument("--key", help="client key (PEM)")
    ping.add_argument("--ca", help="CA file the server's certificate must chain to")
    ping.add_argument(
        "--server-name", help="name the server's certificate must carry (default: the URI host)"
    )
    ping.add_argument("--count", type=int, default=1)
    ping.add_argument("--timeout", type=float, default=5.0)
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
    from sipserver.server import Server
    from sipserver.server.workers import worker_count

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
    count = worker_count(config.server.workers)
    if args.worker_index is None and count > 1:
        return _supervise(args, config, count)
    worker = None if args.worker_index is None else (args.worker_index, args.workers or count)
    configure_logging(
        config.log.level, config.log.format, worker=None if worker is None else worker[0]
    )
    server = Server(
        config,
        config_path=args.config,
        overrides=apply,
        worker=worker,
        admin_socket=args.admin_socket,
        shared_store=args.shared_store,
    )
    return _until_stopped(server.run)


def _until_stopped(run: Callable[[], Awaitable[object]]) -> int:
    """Run the server (or the workers' supervisor): 2 when it cannot start, saying why in
    one log event and one line on stderr (never a traceback: the nursery wraps the error
    of whichever task found it in an exception group)."""
    try:
        trio.run(run)
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:
        failure = _startup_error(exc)
        if failure is None:
            raise
        structlog.get_logger("sipserver").error(
            "server_start_failed", reason=str(failure), key=failure.key
        )
        print(f"sipserver: cannot start: {failure}", file=sys.stderr)
        return 2
    return 0


def _startup_error(exc: BaseException) -> StartupError | None:
    from sipserver.server import StartupError

    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _startup_error(inner)) is not None:
                return found
    return None


def _supervise(args: argparse.Namespace, config: Config, count: int) -> int:
    """server.workers > 1: this process starts and watches the workers."""
    from sipserver.server.workers import Supervisor

    configure_logging(config.log.level, config.log.format, worker="main")
    passed: list[str] = []
    if args.config is not None:
        passed += ["--config", str(args.config)]
    for address in args.address or ():
        passed += ["--address", address]
    for option in ("fqdn", "log_format", "log_level"):
        if (value := getattr(args, option)) is not None:
            passed += [f"--{option.replace('_', '-')}", str(value)]
    return _until_stopped(Supervisor(config, passed, count).run)


def _folder_problems(config: Config) -> list[str]:
    from sipserver.certstore import setup_problems
    from sipserver.config.host import HostDefaults

    state = HostDefaults.of_this_host().state_dir
    return [f"{key}: {problem}" for key, problem in setup_problems(config, state)]


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problems = _folder_problems(config)
    if problems:
        for problem in problems:
            print(f"error: {args.path}: {problem}", file=sys.stderr)
        return 1
    print(
        f"{args.path}: OK — fqdn {config.server.fqdn}, {len(config.peers)} peer(s), {len(config.dial_plans)} dial plan(s), "
        f"SIP port {config.server.sip_port}, TLS port {config.server.tls_port}, "
        f"certificates in {config.tls.certificate_dir}, trust anchors in {config.tls.trust_dir}"
    )
    return 0


def _lab(args: argparse.Namespace) -> int:
    from sipserver.commands.lab import NUMBERS, LabPorts, write_lab

    if not is_fqdn(args.fqdn):
        print(f"error: {args.fqdn!r} is not a valid FQDN", file=sys.stderr)
        return 2
    ports = LabPorts(args.sip_port, args.tls_port, args.phone_port, args.tunnel_port, args.pbx_port)
    steps = write_lab(args.out, args.fqdn.lower(), ports)
    numbers = ", ".join(f"{number} {mode}" for mode, number in NUMBERS.items())
    print(f"lab written to {args.out.resolve()}; answering numbers: {numbers}\n")
    for number, step in enumerate(steps, start=1):
        print(f"  {number}. {step}")
    print("\n(run 1 in one terminal, then any of the others in another; docs/interop.md explains)")
    return 0


def _certs(args: argparse.Namespace) -> int:
    from sipserver.commands import certs as certs_command

    if args.certs_command == "lab-pki":
        for name in [args.server, *args.peer]:
            if not is_fqdn(name):
                print(f"error: {name!r} is not a valid FQDN", file=sys.stderr)
                return 2
        return certs_command.lab_pki(args.out, args.server.lower(), [p.lower() for p in args.peer])
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.certs_command == "show":
        return certs_command.show(config, args.json)
    if args.certs_command == "peers":
        return certs_command.peers(config, args.json)
    return certs_command.export(config, args.der, args.out)


def _ping(args: argparse.Namespace) -> int:
    import time

    from sipserver.commands.ping import PingFailed, describe_result, parse_target, ping

    transport = "tls" if args.tls else "tcp" if args.tcp else None
    try:
        target = parse_target(args.uri, transport)
    except PingFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    worst = 0
    for attempt in range(max(1, args.count)):
        if attempt:
            time.sleep(1.0)
        try:
            result = ping(
                target,
                timeout=args.timeout,
                cert=args.cert,
                key=args.key,
                ca=args.ca,
                server_name=args.server_name,
            )
        except PingFailed as exc:
            print(f"{target.transport.upper()} {target.host}:{target.port}: FAILED: {exc}")
            worst = 1
            continue
        print("\n".join(describe_result(target, result)))
        if not 200 <= result.status < 300:
            worst = 1
    return worst


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as other tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "certs":
        return _certs(args)
    if args.command == "lab":
        return _lab(args)
    if args.command == "ping":
        return _ping(args)
    return _check_config(args)
