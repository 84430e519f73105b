"""Dumps panicd left running when it stopped, completed when it sees their guest again.

A dump runs inside QEMU: panicd stopping (SIGTERM, an upgrade) does not cut it short, and its
metadata is left saying `"result": "running"`. When panicd connects to that guest again it
asks query-dump (which reports QEMU's latest dump) and completes the record:

- same QEMU process, status completed: finished as every dump is (evidence.py: recorded,
  counted, retention, triage, DUMP_COMPLETED with the same fields as a live one);
- same QEMU, status active: followed until it ends;
- same QEMU, but QEMU never began this dump (panicd stopped between writing the record and
  dump-guest-memory; see `qemu_never_began`): the empty file and its record are removed
  quietly (`dump.orphan_never_started`); the panic, handled again, makes its dump then;
- failed, or a different QEMU process (the one that was writing is gone): the partial file
  and its metadata are removed, with a DUMP_FAILED alert.

A record that says "completed" but was never `announced` (panicd stopped during its triage)
is finished the same way: triage and its DUMP_COMPLETED.

Only records older than the connection are orphans: a record written since belongs to a dump
step of this connection, which settles it itself. The dump step of a resumed panic may also
settle an orphan while query-dump is being asked (it removes a record QEMU never began, then
starts a new dump, which query-dump reports from then on): each record is read again before it
is settled, and left alone (`dump.orphan_settled_elsewhere`) unless it still says "running".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import structlog

from panicd import alerts
from panicd.actions import GuestHandle
from panicd.evidence import DumpGone, Evidence, announce, finish_dump, qemu_never_began
from panicd.qmp import QmpCommandError
from panicd.records import DumpRecord

log = structlog.get_logger("panicd.orphans")

POLL_SECONDS = 1.0
#: An orphan still "active" after this long is left alone (and said so).
FOLLOW_LIMIT_SECONDS = 24 * 3600


def _unfinished_records(directory: Path, socket: str, before: str) -> list[DumpRecord]:
    found = []
    for meta_path in directory.glob("*.json"):
        try:
            record = DumpRecord.model_validate_json(meta_path.read_bytes())
        except (OSError, ValueError):
            continue
        # announced is None in records of earlier versions: those were announced.
        unfinished = record.dump.result == "running" or (
            record.dump.result == "completed" and record.announced is False)
        if unfinished and record.guest.socket == socket and record.dump.started_at.isoformat() < before:
            found.append(record)
    return sorted(found, key=lambda r: r.dump.started_at)


async def finish_orphaned_dumps(monitor: GuestHandle, evidence: Evidence) -> None:
    """Settle this guest's dumps left unfinished; a failure here is logged, never raised."""
    try:
        await _finish(monitor, evidence)
    except Exception:
        # A full or read-only disk must cost this bookkeeping only, not the guest's monitor.
        log.exception("dump.orphans_failed")


async def _finish(monitor: GuestHandle, evidence: Evidence) -> None:
    guest = monitor.identity
    dumps = evidence.dumps
    directory = dumps.guest_dir(guest.name)
    connected_at = dt.datetime.now(dt.UTC).isoformat()  # as the dump step writes started_at
    records = await asyncio.to_thread(_unfinished_records, directory, guest.socket, connected_at)
    for index, record in enumerate(records):
        dump_path = Path(record.dump.path)
        meta_path = dumps.metadata_path(dump_path)
        if record.dump.path in evidence.announcing:
            continue  # this panicd is announcing it (a reconnect during its triage)
        if record.dump.result == "completed":  # written, recorded; its triage and alert missing
            log.info("dump.orphan_announced", path=str(dump_path))
            await announce(evidence, record)
            continue
        newest = index == len(records) - 1
        same_qemu = newest and record.guest.qemu_pid == guest.qemu_pid
        status: dict[str, Any] = {"status": "lost"}
        try:
            if same_qemu:
                status = await _follow(monitor)
        except QmpCommandError as exc:
            log.warning("dump.orphan_unknown", path=str(dump_path), error=exc.reason)
            continue  # asked again at the next connection
        # The panic's dump step may have settled this record meanwhile (removed it as never
        # begun, then started a new dump, which query-dump then reports): not ours any more.
        if not await asyncio.to_thread(_still_running, meta_path, dump_path):
            log.info("dump.orphan_settled_elsewhere", path=str(dump_path))
            continue
        if same_qemu and await asyncio.to_thread(qemu_never_began, status.get("status"), dump_path):
            await asyncio.to_thread(dumps.discard, dump_path)
            log.info("dump.orphan_never_started", path=str(dump_path), qemu_status=status.get("status"))
            continue
        why = None
        if status.get("status") == "completed":
            try:
                await finish_dump(evidence, record, guest_bytes=status.get("total"), seconds=None,
                                  away=True)
                log.info("dump.orphan_completed", path=str(dump_path))
                continue
            except DumpGone:
                why = "the dump file is gone"
        elif status.get("status") == "active":
            log.warning("dump.orphan_still_running", path=str(dump_path))
            continue
        why = why or ("the QEMU that was writing it is gone" if not same_qemu
                      else f"QEMU reports it {status.get('status')}")
        await asyncio.to_thread(dumps.discard, dump_path)
        log.warning("dump.orphan_failed", path=str(dump_path), reason=why)
        evidence.alerter.send(alerts.orphan_failed(guest, record.incident.id, str(dump_path), why))


def _still_running(meta_path: Path, dump: Path) -> bool:
    """Whether `meta_path` still exists and says its dump, `dump`, is "running"."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    info = meta.get("dump") if isinstance(meta, dict) else None
    return (isinstance(info, dict) and info.get("result") == "running"
            and info.get("path") == str(dump))


async def _follow(monitor: GuestHandle) -> dict[str, Any]:
    waited = 0.0
    while True:
        reply = await monitor.session().execute("query-dump")
        status = reply if isinstance(reply, dict) else {}
        if status.get("status") != "active" or waited >= FOLLOW_LIMIT_SECONDS:
            return status
        await asyncio.sleep(POLL_SECONDS)
        waited += POLL_SECONDS
