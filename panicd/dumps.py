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
import collections
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panicd.config import Retention

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
    """Creates dump files and their metadata under one directory, within its disk limits."""

    def __init__(self, root: Path, *, min_free_bytes: int = 0,
                 retention: Retention | None = None) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self.retention = retention or Retention()

    def free_bytes(self) -> int:
        """Free space (for an unprivileged writer) on the dump directory's filesystem."""
        path = self.root
        while not path.exists() and path != path.parent:
            path = path.parent
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    def apply_retention(self, now: float | None = None, keep: Path | None = None) -> list[Path]:
        """Remove the oldest completed dumps beyond the retention limits; return them.

        Only dumps whose metadata says "completed" are candidates: one still being written
        (or settled later by orphans.py) is never removed.
        """
        limits = self.retention
        if limits == Retention():
            return []
        now = time.time() if now is None else now
        dumps = self._completed()
        doomed: dict[Path, None] = {}
        if limits.max_age_days is not None:
            cutoff = dt.datetime.fromtimestamp(now - limits.max_age_days * 86400, dt.UTC).isoformat()
            doomed.update((d, None) for started, d, _, _ in dumps if started < cutoff)
        if limits.max_per_guest is not None:
            by_guest: dict[str, list[Path]] = {}
            for _, d, _, guest in dumps:
                by_guest.setdefault(guest, []).append(d)
            for kept in by_guest.values():
                doomed.update((d, None) for d in kept[: -limits.max_per_guest])
        if limits.max_total_bytes is not None:
            total = sum(size for _, d, size, _ in dumps if d not in doomed)
            for _, d, size, _ in dumps:
                if total <= limits.max_total_bytes:
                    break
                if d not in doomed and d != keep:
                    doomed[d] = None
                    total -= size
        if keep is not None:
            doomed.pop(keep, None)  # the dump just made stays, even past a limit alone
        for d in doomed:
            self.discard(d)
        return list(doomed)

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

    def _completed(self) -> list[tuple[str, Path, int, str]]:
        """Completed dumps, oldest first, as (started_at, dump, size, guest dir)."""
        dumps = []
        for meta_path in self.root.glob("*/*.json"):
            try:
                info = json.loads(meta_path.read_text(encoding="utf-8"))["dump"]
                if info.get("result") != "completed":
                    continue
                dump = meta_path.with_name(meta_path.name.removesuffix(".json"))
                dumps.append((str(info["started_at"]), dump, int(info.get("size_bytes") or 0),
                              meta_path.parent.name))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return sorted(dumps)

    @staticmethod
    def metadata_path(dump: Path) -> Path:
        return dump.with_name(dump.name + ".json")

    def write_metadata(self, dump: Path, metadata: dict[str, Any]) -> Path:
        """Write `<dump>.json` atomically (a reader never sees half a file)."""
        target = self.metadata_path(dump)
        tmp = target.with_name(f".{target.name}.tmp")
        data = json.dumps(metadata, indent=2, sort_keys=True, default=_json_default) + "\n"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(target)
        except BaseException:
            # A full disk: leave no half-written temporary file behind to take more space.
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
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
    """The host-wide limit on dumps running at once (`max_concurrent_dumps`), and a count.

    A dump holds a turn (`slot()`) while QEMU writes it. A dump whose QEMU stops answering
    (frozen: SIGSTOP, a host under swap) is `stalled`: it gives its turn back, because a
    frozen QEMU does no I/O and other guests' dumps must not wait behind it, but it keeps its
    share of `reserved_bytes`, since it will write the rest once QEMU runs again. When it
    resumes it counts as running at once, even past the limit: QEMU writes whether or not a
    turn is free. Turns go to waiting dumps oldest first, only while fewer than `limit` run.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: Dumps QEMU is writing now (what `panicd status` calls running).
        self.running = 0
        #: Dumps whose QEMU does not answer; waiting for it, without a turn.
        self.stalled = 0
        #: Disk space the unfinished dumps (running or stalled) are expected to take still.
        self.reserved_bytes = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def turn_free(self) -> bool:
        """Whether a dump asking now gets its turn at once."""
        return self.running < self.limit and not self._waiting

    def slot(self) -> DumpSlot:
        """`async with slots.slot() as slot:` waits for a turn and holds it until the end."""
        return DumpSlot(self)

    async def _take_turn(self) -> None:
        if self.turn_free:
            self.running += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.running -= 1  # the turn came just as this waiter was cancelled: pass it on
                self._hand_out_turns()
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(turn)
            raise

    def _hand_out_turns(self) -> None:
        # A turn is counted when it is handed out, so nothing can take it in between.
        while self._waiting and self.running < self.limit:
            turn = self._waiting.popleft()
            if not turn.done():
                self.running += 1
                turn.set_result(None)


class DumpSlot:
    """One dump's turn in `DumpSlots`: held, given back while stalled, counted again on resume."""

    def __init__(self, slots: DumpSlots) -> None:
        self._slots = slots
        self.stalled = False

    async def __aenter__(self) -> DumpSlot:
        await self._slots._take_turn()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.stalled:
            self._slots.stalled -= 1
        else:
            self._slots.running -= 1
            self._slots._hand_out_turns()

    def stall(self) -> None:
        """QEMU stopped answering: give the turn to the next dump, stay counted as stalled."""
        if not self.stalled:
            self.stalled = True
            self._slots.running -= 1
            self._slots.stalled += 1
            self._slots._hand_out_turns()

    def resume(self) -> None:
        """QEMU answers again: running once more, whether or not a turn is free."""
        if self.stalled:
            self.stalled = False
            self._slots.stalled -= 1
            self._slots.running += 1
