"""The dump store: names that stay inside the dump directory, files panicd owns."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest

from panicd.dumps import DumpStore, safe_name

HOSTILE = ["../../etc/x", "..", ".", "", "/", "a/../../b", "x" * 5000, "\x00\n\t", "ü🙂", "-rf"]


@pytest.mark.parametrize("name", HOSTILE)
def test_safe_name_is_one_harmless_path_component(name: str) -> None:
    safe = safe_name(name)
    assert safe not in ("", ".", "..")
    assert "/" not in safe
    assert "\x00" not in safe
    assert len(safe) <= 80
    assert not safe.startswith(".")


def test_safe_name_keeps_plain_names_and_separates_lookalikes() -> None:
    assert safe_name("web-01") == "web-01"
    assert safe_name("a/b") != safe_name("a_b")
    assert safe_name("../x") != safe_name("__x")


def test_dump_files_are_0600_unique_and_inside_the_dump_dir(tmp_path: Path) -> None:
    store = DumpStore(tmp_path / "dumps")
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    first = store.create("../../etc/x", "elf", when)
    second = store.create("../../etc/x", "elf", when)
    for dump in (first, second):
        os.close(dump.fd)
        assert dump.path.resolve().is_relative_to((tmp_path / "dumps").resolve())
        assert stat.S_IMODE(dump.path.stat().st_mode) == 0o600
    assert first.path != second.path
    assert first.path.name == "20260102T030405.000000Z.elf"
    assert not (tmp_path / "etc").exists()


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    store = DumpStore(tmp_path / "dumps")
    (tmp_path / "dumps").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "dumps" / "web").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="not a directory panicd made"):
        store.create("web", "elf")
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize(("fmt", "ext"), [("elf", "elf"), ("kdump-zlib", "kdump"), ("win-dmp", "dmp")])
def test_extension_follows_format(tmp_path: Path, fmt: str, ext: str) -> None:
    dump = DumpStore(tmp_path).create("g", fmt)
    os.close(dump.fd)
    assert dump.path.suffix == f".{ext}"


def test_metadata_sits_beside_the_dump_and_discard_removes_both(tmp_path: Path) -> None:
    store = DumpStore(tmp_path)
    dump = store.create("g", "elf")
    os.close(dump.fd)
    meta = store.write_metadata(dump.path, {"when": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)})
    assert meta == dump.path.with_name(dump.path.name + ".json")
    assert json.loads(meta.read_text()) == {"when": "2026-01-01T00:00:00+00:00"}
    assert stat.S_IMODE(meta.stat().st_mode) == 0o600
    store.discard(dump.path)
    assert not dump.path.exists()
    assert not meta.exists()
