"""Reload: on SIGHUP, and when the config file or a file in the certificate or trust
folder changes (polled every server.watch_interval s, applied once quiet for
server.reload_debounce s). A new config is validated and its certificates loaded before
anything is swapped; on any error the running state stays."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import structlog
import trio

from sipserver.certstore import CertificateSetupError, ServerCredentials
from sipserver.config.loader import ConfigError, load_config
from sipserver.config.schema import Config
from sipserver.server.credentials import Credentials
from sipserver.server.live_config import LiveConfig
from sipserver.server.snapshot import ServerStats
from sipserver.sip.flow import Transport

log = structlog.get_logger("sipserver")
Snapshot = dict[str, tuple[int, int]]  # path -> (mtime_ns, size)


class Reloader:
    def __init__(
        self,
        config_path: Path | None,
        overrides: Callable[[Config], Config],
        current: LiveConfig,
        apply: Callable[[Config, ServerCredentials | None], None],
        credentials: Credentials,
        stats: ServerStats,
    ) -> None:
        self._config_path = config_path
        self._overrides = overrides
        self._current = current
        self._apply = apply
        self._credentials = credentials
        self._stats = stats

    def reload(self, why: str = "SIGHUP") -> bool:
        """Re-read config, certificates, trust anchors and CRLs, and swap them in at once;
        on any error keep what is running. Established connections and calls carry on."""
        old = self._current.current
        try:
            new = self._overrides(load_config(self._config_path)) if self._config_path else old
            credentials = (
                self._credentials.prepare(new, dt.datetime.now(dt.UTC))
                if Transport.TLS in new.server.transports
                else None
            )
        except (ConfigError, CertificateSetupError) as exc:
            log.error("config_reload_failed", error=str(exc), key=exc.key or None, kept=old.source)
            self._stats.reloads["failed"] += 1
            return False
        if _listening(new) != _listening(old):
            log.warning(
                "config_reload_partial",
                reason="listen addresses, ports and transports change only on restart",
            )
        if new.cluster != old.cluster:
            log.warning("config_reload_partial", reason="[cluster] changes only on restart")
        self._apply(new, credentials)
        log.info("config_reloaded", config=new.source, peers=len(new.peers), why=why)
        self._stats.reloads["ok"] += 1
        return True

    def watched_files(self) -> Snapshot:
        """Modification time and size of the config file and everything in the
        certificate and trust folders."""
        config = self._current.current
        paths: list[Path] = [self._config_path] if self._config_path else []
        for folder in (config.tls.certificate_dir, config.tls.trust_dir):
            if folder.is_dir():
                paths.extend(p for p in folder.iterdir() if p.is_file())
        snapshot: Snapshot = {}
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                continue
            snapshot[str(path)] = (stat.st_mtime_ns, stat.st_size)
        return snapshot

    async def watch(self, known: Snapshot) -> None:
        """Reload when watched files change, once they have been quiet for
        server.reload_debounce seconds (editors and ACME clients write in steps)."""
        while True:
            await trio.sleep(self._current.current.server.watch_interval)
            current = await trio.to_thread.run_sync(self.watched_files)
            if current == known:
                continue
            while True:  # debounce: wait until a snapshot repeats
                await trio.sleep(self._current.current.server.reload_debounce)
                settled = await trio.to_thread.run_sync(self.watched_files)
                if settled == current:
                    break
                current = settled
            changed = sorted(set(current.items()) ^ set(known.items()))
            names = sorted({Path(path).name for path, _ in changed})
            known = current
            self.reload(why=f"files changed: {', '.join(names)}")


def _listening(config: Config) -> tuple[object, ...]:
    server = config.server
    return (server.addresses, server.sip_port, server.tls_port, server.transports)
