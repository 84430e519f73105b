"""The dump store: where dump files go, how they are named, and their metadata.

Layout: `<dump_dir>/<guest name made safe>/<UTC timestamp>.<elf|kdump|dmp>` and, beside each
dump, `<dump file>.json` with what is known of it. panicd creates each file itself (mode 0600,
O_EXCL so nothing is ever overwritten, O_NOFOLLOW so a planted symlink is not followed) and
passes the open fd to QEMU, so QEMU needs no write access to the directory at all.

A guest's name comes from the guest (query-name) or the operator: it may hold `/`, `..`,
control characters or be 10 KiB long. `safe_name` turns any name into one path component,
and appends a short hash whenever it had to change the name, so two names never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME = 64

EXTENSIONS = {"elf": "elf", "win-dmp": "dmp"}  # every kdump-* format: "kdump"


def extension(fmt: str) -> str:
    return EXTENSIONS.get(fmt, "kdump")


def safe_name(name: str) -> str:
    """One path component for `name`: only [A-Za-z0-9._-], never `.`/`..`, at most ~73 chars."""
    cleaned = _UNSAFE.sub("_", name)[:_MAX_NAME]
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    if cleaned == name and cleaned:
        return cleaned
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{cleaned or '_'}-{digest}"


def _json_default(value: object) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


@dataclass
class DumpFile:
    path: Path
    fd: int


class DumpStore:
    """Creates dump files and their metadata under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def guest_dir(self, guest_name: str) -> Path:
        return self.root / safe_name(guest_name)

    def create(self, guest_name: str, fmt: str, when: dt.datetime | None = None) -> DumpFile:
        """Create a new, empty dump file (0600) and return it with an fd open for writing."""
        when = when or dt.datetime.now(dt.UTC)
        directory = self.guest_dir(guest_name)
        self.root.mkdir(mode=0o750, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
        if directory.is_symlink() or not directory.is_dir():
            raise OSError(f"{directory} is not a directory panicd made (a symlink?)")
        stamp = when.strftime("%Y%m%dT%H%M%S.%fZ")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for attempt in range(100):
            suffix = f"-{attempt}" if attempt else ""
            path = directory / f"{stamp}{suffix}.{extension(fmt)}"
            try:
                fd = os.open(path, flags, 0o600)
            except FileExistsError:
                continue
            # The umask may have narrowed the mode; it can never have widened it, but say so.
            os.fchmod(fd, 0o600)
            return DumpFile(path=path, fd=fd)
        raise FileExistsError(f"no free dump file name in {directory} for {stamp}")

    @staticmethod
    def metadata_path(dump: Path) -> Path:
        return dump.with_name(dump.name + ".json")

    def write_metadata(self, dump: Path, metadata: dict[str, Any]) -> Path:
        """Write `<dump>.json` atomically (a reader never sees half a file)."""
        target = self.metadata_path(dump)
        tmp = target.with_name(f".{target.name}.tmp")
        data = json.dumps(metadata, indent=2, sort_keys=True, default=_json_default) + "\n"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(target)
        return target

    def records(self, guest_name: str, qemu_pid: int | None) -> list[dict[str, Any]]:
        """Metadata of this guest's dumps made by the QEMU process `qemu_pid`, oldest first."""
        found = []
        for meta_path in self.guest_dir(guest_name).glob("*.json"):
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(meta, dict) and meta.get("guest", {}).get("qemu_pid") == qemu_pid:
                found.append(meta)
        return sorted(found, key=lambda m: str(m.get("dump", {}).get("started_at", "")))

    def discard(self, dump: Path) -> None:
        """Remove a failed dump and any metadata it has."""
        # Metadata first: interrupted half way, a dump without metadata is only clutter, while
        # metadata without its dump would be a record of something that is not there.
        for path in (self.metadata_path(dump), dump):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


class DumpSlots:
    """The host-wide limit on dumps running at once (`max_concurrent_dumps`), and a count."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self._semaphore = asyncio.Semaphore(limit)

    async def __aenter__(self) -> None:
        await self._semaphore.acquire()
        self.running += 1

    async def __aexit__(self, *exc_info: object) -> None:
        self.running -= 1
        self._semaphore.release()
