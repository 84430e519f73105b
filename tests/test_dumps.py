"""The dump store: names that stay inside the dump directory, files panicd owns."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest

from panicd.config import Retention
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


def _fake_dump(store: DumpStore, guest: str, day: int, size: int, result: str = "completed") -> Path:
    when = dt.datetime(2026, 1, day, tzinfo=dt.UTC)
    dump = store.create(guest, "elf", when)
    os.write(dump.fd, b"\0" * size)
    os.close(dump.fd)
    store.write_metadata(dump.path, {"dump": {"started_at": when, "size_bytes": size,
                                              "result": result}})
    return dump.path


def test_retention_keeps_the_newest_per_guest_and_never_a_running_dump(tmp_path: Path) -> None:
    store = DumpStore(tmp_path, retention=Retention(max_per_guest=2))
    running = _fake_dump(store, "a", 1, 10, result="running")
    a = [_fake_dump(store, "a", day, 10) for day in (2, 3, 4)]
    b = [_fake_dump(store, "b", day, 10) for day in (1, 2)]
    removed = store.apply_retention()
    assert removed == [a[0]]
    assert not a[0].exists()
    assert not store.metadata_path(a[0]).exists()
    assert running.exists()
    assert all(p.exists() for p in (*a[1:], *b))


def test_retention_by_total_size_and_age(tmp_path: Path) -> None:
    store = DumpStore(tmp_path, retention=Retention(max_total_bytes=250))
    dumps = [_fake_dump(store, g, day, 100) for g, day in (("a", 1), ("b", 2), ("a", 3))]
    assert store.apply_retention() == [dumps[0]]  # 300 > 250: the oldest goes

    store.retention = Retention(max_age_days=30)
    now = dt.datetime(2026, 2, 1, 12, tzinfo=dt.UTC).timestamp()  # day 2: 30.5 days; day 3: 29.5
    assert store.apply_retention(now=now) == [dumps[1]]
    assert dumps[2].exists()


def test_no_retention_configured_keeps_everything(tmp_path: Path) -> None:
    store = DumpStore(tmp_path)
    dumps = [_fake_dump(store, "a", day, 10) for day in (1, 2, 3)]
    assert store.apply_retention() == []
    assert all(p.exists() for p in dumps)
