"""The TLS key log (`tls.keylog_file`): OpenSSL hands over each session's secrets as NSS
key log lines, which Wireshark and tshark use to decrypt a capture of our TLS traffic.
For debugging only: whoever holds the file can read every call it covers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from OpenSSL import SSL


class KeyLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        # Owner-only: the lines are keys. Appended, so that a reload does not lose them.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file: BinaryIO = os.fdopen(descriptor, "ab", buffering=0)
        self.lines = 0

    def write(self, _connection: SSL.Connection, line: bytes) -> None:
        """OpenSSL's keylog callback: one line per secret, written at once (a crash must
        not lose the keys of the traffic captured so far)."""
        self._file.write(line + b"\n")
        self.lines += 1

    def close(self) -> None:
        self._file.close()

    def attach(self, context: SSL.Context) -> None:
        context.set_keylog_callback(self.write)
