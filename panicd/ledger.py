"""Which panics panicd has already handled, across reconnections and restarts of panicd.

A guest that panics and is paused by its policy stays in `guest-panicked`. When panicd
reconnects (QMP glitch, panicd restarted, reload), query-status says `guest-panicked` again:
is that a panic missed while away, or the one already dumped? The ledger answers it. A panic
is recorded against the QEMU *process* that reported it (pid and its start time from /proc, so
a recycled pid does not match), and forgotten once that guest runs again.

Each entry is `pending` from the moment the panic is seen until its policy's steps have all
run, then `done`. A panic found `pending` on connect was interrupted (panicd stopped, a reload,
a crash) and is handled again; only `done` means "leave it alone". Without QEMU's pid (no
SO_PEERCRED, another pid namespace) there is no trustworthy key: the ledger is not used, and a
still-paused guest may be handled twice rather than a panic missed.

State lives in `<state_dir>/handled-panics.json`, written atomically by the ledger's own task
(`run`), never on the event path; a lost or corrupt file costs at most a second dump of a
paused guest, never a missed panic.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("panicd.ledger")


FLUSH_DELAY_SECONDS = 0.25

PENDING = "pending"
DONE = "done"


def qemu_instance(socket: str, pid: int | None) -> str | None:
    """A key for one run of one QEMU: its socket, pid and the pid's start time; None if unknown."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # Field 22 (starttime) counts from after the parenthesised command name.
        start = stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{socket}|{pid}|{start}"


def _alive(instance: str) -> bool:
    """Whether the QEMU run named by a key still exists; entries of gone ones are dropped."""
    parts = instance.rsplit("|", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    return qemu_instance(parts[0], int(parts[1])) == instance


class PanicLedger:
    def __init__(self, state_dir: Path | None) -> None:
        self._path = state_dir / "handled-panics.json" if state_dir else None
        self._handled: dict[str, dict[str, Any]] = self._load()
        self._dirty = asyncio.Event()

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._path is None:
            return {}
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ledger.unreadable", path=str(self._path), error=str(exc))
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): v for k, v in data.items()
                if isinstance(v, dict) and v.get("state") in (PENDING, DONE) and _alive(str(k))}

    async def run(self) -> None:
        """Write the ledger whenever it changed; runs until cancelled."""
        try:
            while True:
                await self._dirty.wait()
                # A moment's delay batches a storm's entries into one write, and keeps the
                # write (a thread holding the GIL while it serialises) out of the way of the
                # guest's first steps. A panic lost from the ledger is found on connect anyway.
                await asyncio.sleep(FLUSH_DELAY_SECONDS)
                await self.flush()
        finally:
            if self._dirty.is_set():
                self._write(dict(self._handled))

    async def flush(self) -> None:
        self._dirty.clear()
        await asyncio.to_thread(self._write, dict(self._handled))

    def _write(self, snapshot: dict[str, dict[str, Any]]) -> None:
        if self._path is None:
            return
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self._path.with_name(self._path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(snapshot, out, sort_keys=True)
            tmp.replace(self._path)
        except OSError as exc:
            log.warning("ledger.unwritable", path=str(self._path), error=str(exc))

    def state(self, instance: str | None) -> str | None:
        """PENDING, DONE, or None (no panic of this QEMU on record)."""
        if instance is None:
            return None
        entry = self._handled.get(instance)
        return str(entry["state"]) if entry else None

    def record(self, instance: str | None, when: float) -> None:
        if instance is None:
            return
        entry = self._handled.get(instance)
        if entry and entry["state"] == PENDING:
            return  # the same panic seen again (resumed): it keeps the time it was first seen
        self._handled[instance] = {"state": PENDING, "at": when}
        self._dirty.set()

    def since(self, instance: str | None) -> float | None:
        """When the recorded panic of this QEMU was first seen."""
        entry = self._handled.get(instance) if instance is not None else None
        return float(entry["at"]) if entry else None

    def done(self, instance: str | None) -> None:
        if instance is not None and instance in self._handled:
            self._handled[instance]["state"] = DONE
            self._dirty.set()

    def forget(self, instance: str | None) -> None:
        if instance is not None and self._handled.pop(instance, None) is not None:
            self._dirty.set()
