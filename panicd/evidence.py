"""Finishing a dump: one way for every dump, however panicd saw it end.

A dump is finished when QEMU has written it. Whoever saw that, the same `finish_dump` does the
rest, in this order:

1. record it: size, QEMU's byte count, duration, result "completed" in `<dump>.json`;
2. count it (panicd_dumps_total, DUMP_SECONDS, bytes) and apply retention;
3. read why the guest crashed out of it (triage, in a child process: the dump is hostile);
   when the dump gives no crash title (no VMCOREINFO, say) and the guest has a console log,
   read the console log instead (`console_triage`); a Windows guest's is its bugcheck;
4. sight the crash title (signatures.py: new on this host, or seen before; NEW_CRASH_SIGNATURE);
5. record the triage, mark the record `announced`, and send DUMP_COMPLETED with the same fields
   every time (the crash title, DUMP_*, the triage's, INCIDENT_ID, what could not be recorded);
6. put the dump's summary (path, size, result, panic reason) into the incident's record.

An incident with no dump to read (no dump step, or one that failed) is titled from its console
log alone: `title_from_console`, once its steps have run.

Who calls it:
- the dump step, as soon as QEMU has completed the dump, in a task of its own: the dump's turn
  in `max_concurrent_dumps` is already given back, and the policy's next steps (a restart) go on
  at once, while triage reads the file;
- orphans.py, for a dump QEMU finished while panicd was stopped or disconnected, and for one
  completed but not yet announced when panicd stopped (it died during triage).

From step 1 on the dump is kept, whatever fails: metadata that cannot be written (a full disk),
a triage or a retention that fails, is logged and named in the alert (METADATA_ERROR,
TRIAGE_ERROR, RETENTION_ERROR). Only a dump file that is gone makes it a failure (`DumpGone`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from panicd import alerts
from panicd.alerts import Alerter
from panicd.dumps import DumpStore
from panicd.metrics import Metrics
from panicd.records import ConsoleMark, CrashSighting, DumpRecord, DumpSummary, GuestRecord, TriageResult
from panicd.signatures import CrashSignatures, bugcheck_report
from panicd.triage.run import triage_console_in_child, triage_in_child

log = structlog.get_logger("panicd.evidence")

#: Puts a dump's summary into its incident's record (the incident store).
RecordDump = Callable[[str, DumpSummary], Awaitable[None]]


class DumpGone(Exception):
    """The dump file (or its directory) is gone: there is nothing to finish."""


@dataclass
class Evidence:
    """What finishing a dump needs: the same for every caller."""

    dumps: DumpStore
    alerter: Alerter
    metrics: Metrics
    record_dump: RecordDump | None = None
    #: Where crash titles are sighted (new or known); None: titles are recorded, not sighted.
    signatures: CrashSignatures | None = None
    #: Dumps being announced right now (their triage runs): orphans.py leaves them alone, or
    #: a reconnect during a triage would announce the same dump twice.
    announcing: set[str] = field(default_factory=set)


def os_error_text(exc: OSError) -> str:
    """What went wrong, and on which file: `/x/y.json: No space left on device`."""
    what = os.strerror(exc.errno) if exc.errno else str(exc)
    return f"{exc.filename}: {what}" if exc.filename else what


def lost_file_reason(path: Path, exc: OSError, qemu_may_write: bool) -> str:
    """Why a dump's file cannot be used, said before anything is removed."""
    when = "while QEMU wrote the dump" if qemu_may_write else "before QEMU could write the dump"
    if not path.parent.is_dir():
        return f"the dump directory {path.parent} was removed {when}"
    if not path.exists():
        return f"the dump file {path} was removed {when}"
    return f"cannot record the dump {path}: {os_error_text(exc)}"


def qemu_never_began(status: str | None, dump: Path) -> bool:
    """Whether QEMU never began writing `dump`, judged by query-dump's `status` and the file.

    query-dump reports QEMU's latest dump only, which may be another one (an earlier panic's,
    or one started since). "none": this QEMU has made no dump at all. A finished one
    ("completed", "failed") while this file is still empty was another dump: QEMU writes a
    dump's header first. A missing file, or an unknown status (None), proves nothing.
    """
    if status == "none":
        return True
    return status in ("completed", "failed") and _size(dump) == 0


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


async def record_completed(evidence: Evidence, record: DumpRecord, *, guest_bytes: int | None,
                           seconds: float | None, away: bool = False) -> dict[str, str]:
    """Step 1 and 2: the dump on record as completed, counted, retention applied.

    Returns what could not be recorded (alert fields); raises DumpGone when the file is gone.
    """
    path = Path(record.dump.path)
    not_recorded: dict[str, str] = {}
    # Being announced from now on (announce() lets go): an orphan pass of a reconnect that
    # reads "completed, not announced" meanwhile must leave it to this panicd.
    evidence.announcing.add(record.dump.path)
    try:
        size: int | None = (await asyncio.to_thread(path.stat)).st_size
    except (FileNotFoundError, NotADirectoryError) as exc:
        evidence.announcing.discard(record.dump.path)
        reason = await asyncio.to_thread(lost_file_reason, path, exc, True)
        try:
            await asyncio.to_thread(evidence.dumps.discard, path)  # its record, if still there
        except OSError as discard_exc:
            log.warning("dump.discard_failed", path=str(path), error=os_error_text(discard_exc))
        raise DumpGone(reason) from exc
    except OSError as exc:
        size = None
        not_recorded["METADATA_ERROR"] = f"cannot stat the dump: {os_error_text(exc)}"
    record.dump.result = "completed"
    record.dump.size_bytes = size
    record.dump.guest_bytes = guest_bytes
    if seconds is not None:
        record.dump.duration_seconds = round(seconds, 3)
    if away:
        record.dump.completed_while_panicd_was_away = True
    record.announced = False
    # In a thread: write_metadata fsyncs, and the event loop serves every other guest.
    await asyncio.to_thread(_write, evidence, record, not_recorded)
    evidence.metrics.dumps.labels(result="completed").inc()
    if seconds is not None:
        evidence.metrics.dump_seconds.observe(seconds)
    evidence.metrics.dump_bytes.inc(size or 0)
    try:
        removed = await asyncio.to_thread(evidence.dumps.apply_retention, None, path)
    except Exception as exc:
        error = os_error_text(exc) if isinstance(exc, OSError) else repr(exc)
        not_recorded["RETENTION_ERROR"] = f"retention not applied: {error}"
        log.warning("retention.failed", error=error)
    else:
        if removed:
            log.info("retention.removed", dumps=[str(p) for p in removed])
    return not_recorded


async def announce(evidence: Evidence, record: DumpRecord,
                   not_recorded: dict[str, str] | None = None) -> TriageResult:
    """Steps 3 to 5: triage, the record rewritten, DUMP_COMPLETED sent, the incident told.

    Cancelled (panicd stopping) during triage, it still records and alerts, without triage.
    """
    not_recorded = dict(not_recorded or {})
    path = Path(record.dump.path)
    evidence.announcing.add(record.dump.path)
    report: TriageResult | None = None
    crash: CrashSighting | None = None
    try:
        report = await _triage(path)
        if report.title is None and record.incident.console is not None:
            report = _titled_by_console(report, await console_triage(record.incident.console))
        if report.title is None and record.incident.bugcheck is not None:
            # A Windows guest: no kernel log panicd can read, but QEMU reported its bugcheck.
            report = bugcheck_report(record.incident.bugcheck).model_copy(
                update={"dump_error": report.error})
        if evidence.signatures is not None and record.incident.reports_crash:
            crash = await evidence.signatures.sight(
                record.guest, record.incident.id, report, record.incident.received_at.timestamp(),
                record.dump.path)
    except asyncio.CancelledError:
        record.triage = report or TriageResult(error="panicd stopped while triage ran")
        _finish(evidence, record, not_recorded, crash)
        raise
    finally:
        evidence.announcing.discard(record.dump.path)
    record.triage = report
    await asyncio.to_thread(_finish, evidence, record, not_recorded, crash)
    if evidence.record_dump is not None and record.incident.id is not None:
        try:
            await evidence.record_dump(record.incident.id, summary(record))
        except Exception:
            log.exception("dump.incident_not_updated", incident=record.incident.id)
    return report


async def finish_dump(evidence: Evidence, record: DumpRecord, *, guest_bytes: int | None,
                      seconds: float | None, away: bool = False) -> TriageResult:
    """All five steps, one after the other (orphans.py; the dump step runs `announce` apart)."""
    not_recorded = await record_completed(evidence, record, guest_bytes=guest_bytes,
                                          seconds=seconds, away=away)
    return await announce(evidence, record, not_recorded)


def summary(record: DumpRecord) -> DumpSummary:
    triage = record.triage
    return DumpSummary(path=record.dump.path, format=record.dump.format,
                       format_fallback=record.dump.format_fallback, bytes=record.dump.size_bytes,
                       seconds=record.dump.duration_seconds, result=record.dump.result,
                       panic_reason=triage.panic_reason if triage is not None else None,
                       # The dump's own triage error, also when the console log gave the title.
                       triage_error=(triage.error or triage.dump_error) if triage is not None
                       else None)


async def title_from_console(evidence: Evidence, guest: GuestRecord, incident_id: str,
                             console: ConsoleMark, seen_at: float) -> CrashSighting | None:
    """An incident with no dump to read: its crash title from the guest's console log."""
    report = await console_triage(console)
    if report.error is not None:
        log.warning("console.triage_failed", path=console.path, error=report.error)
        return None
    if report.title is None:
        log.info("console.no_crash", path=console.path)
        return None
    if evidence.signatures is None:
        return None
    return await evidence.signatures.sight(guest, incident_id, report, seen_at, None)


async def console_triage(console: ConsoleMark) -> TriageResult:
    """The report of a guest's console log up to where it was at the panic (in a child: the
    guest wrote it)."""
    try:
        report = await triage_console_in_child(Path(console.path), console.offset)
        return TriageResult.model_validate({**report, "source": "console_log"})
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        error = os_error_text(exc) if isinstance(exc, OSError) else repr(exc)
        return TriageResult(error=f"console triage could not run: {error}", source="console_log")


def _titled_by_console(dump: TriageResult, console: TriageResult) -> TriageResult:
    """The dump's report, or the console log's when only the console log holds a crash title
    (the dump's error, if any, kept as `dump_error`)."""
    if console.title is None:
        if console.error is not None:
            log.warning("console.triage_failed", error=console.error)
        return dump
    return console.model_copy(update={"dump_error": dump.error})


def _finish(evidence: Evidence, record: DumpRecord, not_recorded: dict[str, str],
            crash: CrashSighting | None) -> None:
    # In a thread; or right here when cancelled (panicd stopping: a moment's blocking is fine).
    record.announced = True
    _write(evidence, record, not_recorded)
    evidence.alerter.send(alerts.dump_completed(record, not_recorded, crash))


def _write(evidence: Evidence, record: DumpRecord, not_recorded: dict[str, str]) -> None:
    path = Path(record.dump.path)
    try:
        evidence.dumps.write_metadata(path, record.model_dump(mode="json"))
    except Exception as exc:
        error = os_error_text(exc) if isinstance(exc, OSError) else repr(exc)
        not_recorded["METADATA_ERROR"] = "; ".join(filter(None, [
            not_recorded.get("METADATA_ERROR"),
            f"cannot write {evidence.dumps.metadata_path(path)}: {error}"]))
        log.error("dump.metadata_failed", path=str(path),  # noqa: TRY400 - said, not a bug
                  error=not_recorded["METADATA_ERROR"])


async def _triage(path: Path) -> TriageResult:
    # A triage that cannot run (no processes left, or a bug) costs the report, not the dump.
    try:
        return TriageResult.model_validate(await triage_in_child(path))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        error = os_error_text(exc) if isinstance(exc, OSError) else repr(exc)
        log.warning("dump.triage_failed", path=str(path), error=error)
        return TriageResult(error=f"triage could not run: {error}")
