"""The interop guide shows settings that are tested as written."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_baresip_settings_in_docs_interop_are_what_sipserver_lab_writes(tmp_path: Path) -> None:
    """docs/interop.md shows baresip's config and account exactly as `sipserver lab` writes
    them with its default ports; the lab's end-to-end test runs those files."""
    from sipserver.commands.lab import LabPorts, write_lab

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


def test_the_configuration_page_is_written_from_the_schema() -> None:
    from sipserver.config.reference import page

    assert (REPO / "docs" / "configuration.md").read_text() == page(), (
        "docs/configuration.md is stale: python -m sipserver.config.reference > "
        "docs/configuration.md"
    )


def written_values(path: Path) -> list[tuple[str, object, object]]:
    """(key, value in the file, the schema's default) for every key a single table of the
    file sets, where the default does not come from the host."""
    import dataclasses
    import tomllib

    from sipserver.config.reference import key_name, toml_value
    from sipserver.config.schema import SECTIONS

    data = tomllib.loads(path.read_text())
    found = []
    for section, (cls, array) in SECTIONS.items():
        if array or section not in data:
            continue
        specs = {key_name(spec): spec for spec in dataclasses.fields(cls)}
        for key, value in data[section].items():
            spec = specs[key]
            if spec.metadata.get("shown"):
                continue
            if spec.default is not dataclasses.MISSING:
                default = spec.default
            elif spec.default_factory is not dataclasses.MISSING:
                default = spec.default_factory()
            else:
                continue
            schema = None if default is None else tomllib.loads(f"v = {toml_value(default)}")["v"]
            found.append((f"{section}.{key}", value, schema))
    return found


def test_the_default_file_and_the_example_agree_with_the_schema_on_every_value() -> None:
    """A default is written once, in the schema: default.toml and the commented example
    may repeat it, but never with another value."""
    for path in (REPO / "sipserver" / "default.toml", REPO / "examples" / "sipserver.toml"):
        values = written_values(path)
        assert len(values) >= 10, path  # the check reads the file's keys
        wrong = [(key, file, schema) for key, file, schema in values if file != schema]
        assert not wrong, f"{path.name}: (key, file, schema) {wrong}"


def logged_names() -> set[str]:
    """Every event name the code logs: `log.<level>("name", ...)` calls, event classes'
    `name`, and the names events compose (`sip_request_malformed`, `registration_added`)."""
    import ast

    names: set[str] = set()
    for path in (REPO / "sipserver").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"debug", "info", "warning", "error", "exception"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and re.fullmatch(r"[a-z_]+", node.args[0].value)
            ):
                names.add(node.args[0].value)
            if (
                isinstance(node, ast.Assign)
                and [getattr(t, "id", None) for t in node.targets] == ["name"]
                and isinstance(node.value, ast.Constant)
            ):
                names.add(str(node.value.value))
            if (
                isinstance(node, ast.keyword)
                and node.arg in {"refusal", "log_event"}
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                names.add(node.value.value)
    names.discard("event")  # the base class's placeholder
    names |= {f"sip_{kind}_malformed" for kind in ("request", "response")}
    changes = ("added", "refreshed", "replaced", "removed", "expired")  # RegistrationChanged
    names |= {f"registration_{change}" for change in changes}
    return names


def test_the_log_events_page_is_written_from_the_table_and_names_every_event() -> None:
    from sipserver.server.log_reference import EVENTS, page

    assert (REPO / "docs" / "log-events.md").read_text() == page(), (
        "docs/log-events.md is stale: python -m sipserver.server.log_reference > docs/log-events.md"
    )
    documented = {name for event in EVENTS for name in event.names}
    source = "".join(p.read_text() for p in (REPO / "sipserver").rglob("*.py"))
    logged = logged_names()
    assert not logged - documented, f"logged but not in the table: {sorted(logged - documented)}"
    stale = [n for n in documented - logged if f'"{n}"' not in source]
    assert not stale, f"in the table but never logged: {stale}"
    for event in EVENTS:
        levels = event.level.split(" / ")
        assert {level.split()[0].rstrip(",;") for level in levels} <= {
            "debug",
            "info",
            "warning",
            "error",
        }, event.names


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def test_the_readme_is_a_short_manual_with_a_table_of_contents() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 20_000
    assert "## Contents" in readme
    for page in ("operations", "calls", "configuration", "log-events", "interop", "architecture"):
        assert f"(docs/{page}.md)" in readme, page
    assert "apt-get update" in readme and "pip install ." in readme  # the two commands


def test_every_link_between_the_pages_leads_somewhere() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not ours to check
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
                if anchor not in {slug(h) for h in headings}:
                    broken.append(f"{page.name}: {target}")
    assert not broken, broken


def test_every_core_event_class_says_what_it_is_on_the_log_events_page() -> None:
    """The field-by-field part of docs/log-events.md comes from the event classes: each
    has a docstring of its own (not dataclass's generated signature) and a row."""
    from sipserver.server.log_reference import event_classes

    page = (REPO / "docs" / "log-events.md").read_text()
    classes = event_classes()
    assert len(classes) >= 19
    for cls in classes:
        doc = cls.__doc__ or ""
        assert doc and not doc.startswith(f"{cls.__name__}("), f"{cls.__name__} has no docstring"
        assert f"| `{cls.__name__}` |" in page, cls.__name__
