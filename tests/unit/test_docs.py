"""The interop guide shows settings that are tested as written."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_baresip_settings_in_docs_interop_are_what_sipserver_lab_writes(tmp_path: Path) -> None:
    """docs/interop.md shows baresip's config and account exactly as `sipserver lab` writes
    them with its default ports; the lab's end-to-end test runs those files."""
    from sipserver.lab import LabPorts, write_lab

    write_lab(tmp_path / "lab", "sip.example.test", LabPorts())
    docs = (REPO / "docs" / "interop.md").read_text()
    blocks = re.findall(r"\n  ```text\n(.*?)\n  ```", docs, re.S)
    shown = ["\n".join(line.removeprefix("  ") for line in b.splitlines()) for b in blocks]
    written = [
        (tmp_path / "lab" / "baresip" / name)
        .read_text()
        .strip()
        .replace(str((tmp_path / "lab").resolve()), "/path/to/lab")
        for name in ("config", "accounts")
    ]
    assert shown == written
