"""The man pages: panicd(8) and panicd.toml(5) render cleanly, document every config key, and
every man: and file: reference in the unit and the journal catalog points at one we ship."""

from __future__ import annotations

import os
import re
import subprocess
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from panicd.alerts import AlertKind
from panicd.config import Config

ROOT = Path(__file__).resolve().parent.parent
MANPATH = ROOT / "docs" / "man"
PAGES = {"panicd(8)": MANPATH / "man8" / "panicd.8",
         "panicd.toml(5)": MANPATH / "man5" / "panicd.toml.5"}
#: Where the README's install steps put the repo's documents (file: references).
DOC_DIR = "/usr/local/share/doc/panicd/"


def render(page: Path) -> subprocess.CompletedProcess[str]:
    """The page as `man` shows it, plain text (no bold by overstrike), unhyphenated."""
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-rLL=80n", "-rHY=0", str(page)],
                            capture_output=True, text=True, timeout=30, check=False,
                            env={**os.environ, "LC_ALL": "C.UTF-8"})
    result.stdout = re.sub(r".\x08", "", result.stdout)
    return result


@pytest.mark.parametrize("page", PAGES.values(), ids=PAGES.keys())
def test_man_page_renders_without_warnings(page: Path) -> None:
    result = render(page)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # -ww: every groff warning
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"):
        assert re.search(rf"^{section}$", result.stdout, re.MULTILINE), section
    shown = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, timeout=30,
                           check=False, env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "80"})
    assert shown.returncode == 0, shown.stderr
    assert "panicd" in shown.stdout


def test_panicd_8_names_every_alert_message_id() -> None:
    text = render(PAGES["panicd(8)"]).stdout
    for kind in AlertKind:
        assert kind.message_id in text, kind


def model_of(annotation: object) -> type[BaseModel] | None:
    """The pydantic model inside a field's type (`Retention`, `list[Policy]`, `X | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            if (found := model_of(arg)) is not None:
                return found
    return None


def config_keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, default) for every key of a table, nested tables' keys too."""
    for name, field in model.model_fields.items():
        yield prefix + name, field.default
        nested = model_of(field.annotation)
        if nested is not None:
            yield from config_keys(nested, f"{prefix}{name}.")


def sections_of(page: Path) -> dict[str, dict[str, str]]:
    """{"[daemon]": {"dump_dir": its paragraph, ...}, ...}: each .SS table's .TP items."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    key: str | None = None
    for line in page.read_text().splitlines():
        if line.startswith((".SS", ".SH")):
            title = line.split(None, 1)[1].strip('"') if " " in line else ""
            current = out.setdefault(title, {}) if title.startswith("[") else None
            key = None
        elif current is not None and line == ".TP":
            key = ""
        elif current is not None and key == "" and line.startswith(".B "):
            key = line[3:].strip()
            current[key] = ""
        elif current is not None and key:
            current[key] += line + "\n"
    return out


def shown(default: object) -> str | None:
    """How the page writes a scalar default; None when there is none to check."""
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, int):
        return str(default)
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, str | Path):
        return str(default)
    return None


def test_panicd_toml_5_documents_every_config_key_with_its_default() -> None:
    documented = sections_of(PAGES["panicd.toml(5)"])
    tables = {"daemon": "[daemon]", "discovery": "[discovery]", "guest": "[[guest]]",
              "policy": "[[policy]]"}
    assert set(Config.model_fields) == set(tables), "a new top-level table: document it"
    for table, title in tables.items():
        model = model_of(Config.model_fields[table].annotation)
        assert model is not None
        items = documented.get(title, {})
        for key, default in config_keys(model):
            assert key in items, f"{title} {key} is not in panicd.toml(5)"
            text = shown(default)
            if text is not None:
                assert text in items[key], f"{title} {key}: default {text} not in its entry"
        stale = set(items) - {k for k, _ in config_keys(model)}
        assert not stale, f"{title}: panicd.toml(5) documents keys config.py lacks: {stale}"


def references() -> list[tuple[str, str]]:
    """(where, reference) for the unit's Documentation= and the catalog's Support:/Documentation:."""
    out: list[tuple[str, str]] = []
    unit = (ROOT / "systemd" / "panicd.service").read_text()
    for line in unit.splitlines():
        if line.startswith("Documentation="):
            out += [("panicd.service", ref) for ref in line.split("=", 1)[1].split()]
    catalog = (ROOT / "systemd" / "panicd.catalog").read_text()
    for line in catalog.splitlines():
        if line.startswith(("Support:", "Documentation:")):
            out += [("panicd.catalog", ref) for ref in line.split(":", 1)[1].split()]
    return out


def test_every_man_and_file_reference_resolves_to_what_the_repo_ships() -> None:
    refs = references()
    assert {r for _, r in refs} >= {"man:panicd(8)", "man:panicd.toml(5)",
                                    f"file:{DOC_DIR}README.md"}
    for where, ref in refs:
        if ref.startswith("man:"):
            match = re.fullmatch(r"man:([\w.-]+)\((\d)\)", ref)
            assert match, f"{where}: {ref}"
            # Only the repo's pages are searched: a page installed on this machine won't do.
            found = subprocess.run(["man", "-w", match.group(2), match.group(1)],
                                   capture_output=True, text=True, timeout=30, check=False,
                                   env={**os.environ, "MANPATH": str(MANPATH)})
            assert found.returncode == 0, f"{where}: {ref} is not a page in docs/man"
            assert Path(found.stdout.strip()) in PAGES.values()
        elif ref.startswith("file:"):
            path = ref.removeprefix("file:")
            assert path.startswith(DOC_DIR), f"{where}: {ref} is not where the README installs"
            assert (ROOT / path.removeprefix(DOC_DIR)).is_file(), f"{where}: {ref}"
        else:
            pytest.fail(f"{where}: {ref}: only man: and file: references are checked")
