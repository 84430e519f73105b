"""The `dump` step: the guest's memory into a file panicd owns.

1. Ask QEMU which formats it can write (query-dump-guest-memory-capability); a format it lacks
   (Debian's 7.2 has no kdump-lzo/snappy) falls back to elf, with a warning. Ask the guest's RAM
   size (query-memory-size-summary), for the disk guard.
2. Wait for a host-wide dump turn (`max_concurrent_dumps`): the guest stays stopped meanwhile.
   Both questions above are asked before: a QEMU that does not answer them holds no turn.
3. Check the disk guard, create the file (dumps.DumpStore: 0600, unique, never overwriting),
   pass its fd to QEMU (SCM_RIGHTS + getfd), and start `dump-guest-memory` with
   `protocol: "fd:NAME"`, detached, so QEMU writes while this task follows progress with
   query-dump and DUMP_COMPLETED.
4. On success write `<dump>.json` and alert; on failure or timeout remove the partial file,
   alert, and let the policy's next steps run. Once QEMU says the dump is completed it is
   never removed: only a file that is gone fails it then (see `_record_completed`).

QEMU 7.2 has no command to cancel a dump: after a timeout QEMU may still be writing to the
(removed) file, and refuses stop/cont/another dump until it finishes (the restart step waits
for it: power.py).

The policy's `timeout` is the only time limit on a dump: one deadline, counted from the step's
start (the time spent waiting for a turn, panicd's own queue, is not counted), bounds every
wait for QEMU, from the first query to the last byte written.

How QEMU is driven while it writes (fd passing, stalls, progress) is `qemu_dump.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import structlog

from panicd import __version__
from panicd.actions import StepContext, guest_session, run_command
from panicd.actions.qemu_dump import POLL_SECONDS, Detached, Progress, time_left, write_dump
from panicd.alerts import Alert, AlertKind
from panicd.dumps import DumpSlot
from panicd.errors import DumpFailed, StepFailed
from panicd.events import Detection, DumpCompletedData
from panicd.orphans import qemu_never_began
from panicd.triage.run import triage_in_child

log = structlog.get_logger("panicd.dump")

async def dump(ctx: StepContext) -> dict[str, Any]:
    settings = ctx.policy.dump
    guest_session(ctx, "dump")  # a guest not connected fails now, not after waiting for a turn
    if ctx.incident.detection is Detection.RESUMED:
        made = await _dump_of_resumed_panic(ctx)
        if made is not None:
            return made
    # Every wait for QEMU in this dump ends by this deadline (module docstring).
    deadline = time.monotonic() + settings.timeout
    fmt = await _usable_format(ctx, settings.format, deadline)
    need = await _guest_ram(ctx, deadline)

    slots = ctx.dump_slots
    if not slots.turn_free:
        log.info("dump.waiting_for_turn", running=slots.running, limit=slots.limit)
    waited = time.monotonic()
    async with slots.slot() as slot:
        waited = time.monotonic() - waited
        deadline += waited  # the queue is panicd's, not QEMU's slowness: it is not counted
        await _check_space(ctx, need)
        slots.reserved_bytes += need
        try:
            return await _dump_in_slot(ctx, fmt, waited, slot, deadline)
        finally:
            slots.reserved_bytes -= need


async def _dump_of_resumed_panic(ctx: StepContext) -> dict[str, Any] | None:
    """For a panic handled again: the dump an earlier panicd made of it, or None to make one.

    panicd stopped after this panic's dump record was written: orphans.py settles the record,
    and the next steps wait until QEMU has finished writing it (a reset now would abort QEMU).
    A record whose dump QEMU never began (panicd stopped before dump-guest-memory) is removed
    here, quietly: the dump is made now, as it would have been.
    """
    guest = ctx.guest.identity
    since = dt.datetime.fromtimestamp(ctx.incident.received_at, dt.UTC).isoformat()
    earlier = [m for m in await asyncio.to_thread(ctx.dumps.records, guest.name, guest.qemu_pid)
               if str(m.get("dump", {}).get("started_at", "")) >= since]
    if not earlier:
        return None
    path = Path(earlier[-1]["dump"]["path"])
    status = await _wait_until_written(ctx, ctx.policy.dump.timeout)
    if await asyncio.to_thread(qemu_never_began, status, path):
        await asyncio.to_thread(ctx.dumps.discard, path)
        log.info("dump.never_started", path=str(path), qemu_status=status)
        return None
    log.info("dump.already_made", path=str(path))
    return {"skipped": "dump already made for this panic", "path": str(path),
            "result": earlier[-1]["dump"]["result"]}


async def _wait_until_written(ctx: StepContext, timeout: float) -> str | None:
    """QEMU's dump status once it is not "active" any more; None when QEMU could not say."""
    with contextlib.suppress(TimeoutError, StepFailed):
        async with asyncio.timeout(timeout):
            while True:
                state = await run_command(ctx, "dump", "query-dump", give_up_after=timeout)
                status = state.get("status") if isinstance(state, dict) else None
                if status != "active":
                    return status if isinstance(status, str) else None
                await asyncio.sleep(POLL_SECONDS)
    return None


async def _guest_ram(ctx: StepContext, deadline: float) -> int:
    """The dump's expected size: the guest's RAM (query-memory-size-summary). An elf dump is
    about that size, and a compressed one can be, for a guest whose memory does not compress."""
    summary = await run_command(ctx, "dump", "query-memory-size-summary",
                                give_up_after=time_left(deadline))
    if not isinstance(summary, dict):
        return 0
    return int(summary.get("base-memory") or 0) + int(summary.get("plugged-memory") or 0)


async def _check_space(ctx: StepContext, need: int) -> None:
    """The disk guard: DumpFailed when a dump of `need` bytes would not fit beside the dumps
    already running (their reservations) and `min_free_bytes`."""
    name = ctx.guest.identity.name
    try:
        free = await asyncio.to_thread(ctx.dumps.free_bytes)
    except OSError as exc:
        raise DumpFailed(name, f"cannot check free space under {ctx.dumps.root}: {exc}") from exc
    spare = free - ctx.dump_slots.reserved_bytes - ctx.dumps.min_free_bytes
    if need > spare:
        raise DumpFailed(
            name,
            f"skipped: not enough space under {ctx.dumps.root}: the dump needs about {need} bytes "
            f"(guest RAM); {free} bytes free, {ctx.dump_slots.reserved_bytes} reserved by running "
            f"dumps, min_free_bytes {ctx.dumps.min_free_bytes}",
        )


async def _dump_in_slot(
    ctx: StepContext, fmt: str, waited: float, slot: DumpSlot, deadline: float
) -> dict[str, Any]:
    guest = ctx.guest.identity
    settings = ctx.policy.dump
    started_at = dt.datetime.now(dt.UTC)
    try:
        dump_file = await asyncio.to_thread(ctx.dumps.create, guest.name, fmt, started_at)
    except OSError as exc:
        raise DumpFailed(guest.name, f"cannot create the dump file: {os_error_text(exc)}") from exc
    path = dump_file.path
    args: dict[str, Any] = {"paging": settings.paging, "protocol": "", "detach": True}
    if fmt != "elf":
        args["format"] = fmt
    progress = Progress()
    try:
        # Written before QEMU is asked: a dump QEMU may be writing always has its record.
        await asyncio.to_thread(
            ctx.dumps.write_metadata, path, _metadata(ctx, path, fmt, started_at, waited)
        )
        # Re-read the session: the guest may have reconnected while this task waited.
        result = await write_dump(ctx, guest_session(ctx, "dump"), fd=dump_file.fd, args=args,
                                 deadline=deadline, progress=progress, slot=slot)
    except Detached as exc:
        # The QMP connection dropped while QEMU was writing. QEMU goes on without us (if it
        # is still there): the metadata stays "running" and orphans.py settles it, with its
        # alert, when the guest is connected again.
        log.warning("dump.detached", path=str(path), error=str(exc))
        return {"path": str(path), "format": fmt, "result": "running"}
    except asyncio.CancelledError:
        # panicd is stopping. Once QEMU may be writing, it goes on without us: the metadata
        # says "running" until a later panicd settles it (orphans.py). Before that, the
        # empty file is of no use.
        if not progress.qemu_may_write:
            await asyncio.to_thread(ctx.dumps.discard, path)
        raise
    except OSError as exc:
        # The file or its directory went away, or the disk refused the first metadata (full).
        # Said before the file is discarded: afterwards every file would look "removed".
        reason = await asyncio.to_thread(_lost_file_reason, path, exc, progress.qemu_may_write)
        await asyncio.to_thread(ctx.dumps.discard, path)
        raise DumpFailed(guest.name, reason) from exc
    except BaseException:
        await asyncio.to_thread(ctx.dumps.discard, path)
        raise
    finally:
        os.close(dump_file.fd)
    return await _record_completed(ctx, path, fmt, started_at=started_at, waited=waited,
                                   result=result, seconds=time.monotonic() - progress.begun)


def os_error_text(exc: OSError) -> str:
    """What went wrong, and on which file: `/x/y.json: No space left on device`."""
    what = os.strerror(exc.errno) if exc.errno else str(exc)
    return f"{exc.filename}: {what}" if exc.filename else what


def _lost_file_reason(path: Path, exc: OSError, qemu_may_write: bool) -> str:
    when = "while QEMU wrote the dump" if qemu_may_write else "before QEMU could write the dump"
    if not path.parent.is_dir():
        return f"the dump directory {path.parent} was removed {when}"
    if not path.exists():
        return f"the dump file {path} was removed {when}"
    return f"cannot record the dump {path}: {os_error_text(exc)}"


async def _record_completed(
    ctx: StepContext, path: Path, fmt: str, *, started_at: dt.datetime, waited: float,
    result: DumpCompletedData, seconds: float,
) -> dict[str, Any]:
    """QEMU has written the dump: its metadata, triage, metrics, retention and alert.

    From here on the dump is kept, whatever fails: it is complete, and it is the evidence.
    Only a dump file that is gone (or its directory) makes a DUMP_FAILED now. Metadata that
    cannot be written (a full disk), a triage or a retention that fails, is logged and said
    in the DUMP_COMPLETED alert (METADATA_ERROR, TRIAGE_ERROR, RETENTION_ERROR). A record not
    rewritten keeps saying "running"; the next connection to this QEMU settles it (orphans.py).
    """
    guest = ctx.guest.identity
    not_recorded: dict[str, str] = {}
    size: int | None = None
    try:
        size = (await asyncio.to_thread(path.stat)).st_size
    except (FileNotFoundError, NotADirectoryError) as exc:
        reason = await asyncio.to_thread(_lost_file_reason, path, exc, True)
        try:
            await asyncio.to_thread(ctx.dumps.discard, path)  # its record, if still there
        except OSError as discard_exc:
            log.warning("dump.discard_failed", path=str(path), error=os_error_text(discard_exc))
        raise DumpFailed(guest.name, reason) from exc
    except OSError as exc:
        not_recorded["METADATA_ERROR"] = f"cannot stat the dump: {os_error_text(exc)}"
    metadata = _metadata(ctx, path, fmt, started_at, waited)
    metadata["dump"].update(
        size_bytes=size,
        guest_bytes=result.result.total,
        duration_seconds=round(seconds, 3),
        result="completed",
    )
    # Why the kernel panicked, read out of the dump (in a child process: the dump is hostile).
    report = await _triage(path)
    metadata["triage"] = report
    try:
        await asyncio.to_thread(ctx.dumps.write_metadata, path, metadata)
    except Exception as exc:
        error = os_error_text(exc) if isinstance(exc, OSError) else repr(exc)
        not_recorded["METADATA_ERROR"] = "; ".join(filter(None, [
            not_recorded.get("METADATA_ERROR"),
            f"cannot write {ctx.dumps.metadata_path(path)}: {error}"]))
    if "METADATA_ERROR" in not_recorded:
        log.error("dump.metadata_failed", path=str(path), error=not_recorded["METADATA_ERROR"])
    ctx.dump_path = path
    ctx.metrics.dumps.labels(result="completed").inc()
    ctx.metrics.dump_seconds.observe(seconds)
    ctx.metrics.dump_bytes.inc(size or 0)
    try:
        removed = await asyncio.to_thread(ctx.dumps.apply_retention, None, path)
    except Exception as exc:
        error = os_error_text(exc) if isinstance(exc, OSError) else repr(exc)
        not_recorded["RETENTION_ERROR"] = f"retention not applied: {error}"
        log.warning("retention.failed", error=error)
    else:
        if removed:
            log.info("retention.removed", dumps=[str(p) for p in removed])
    size_text = f"{size} bytes" if size is not None else "size unknown"
    ctx.alerter.send(
        Alert(
            AlertKind.DUMP_COMPLETED,
            f"Guest {guest.name}: memory dump written to {path} ({size_text}, {fmt}, {seconds:.1f} s)"
            + (f"; Kernel panic - not syncing: {report['panic_reason']}"
               if report.get("panic_reason") else "")
            + "".join(f"; {text}" for text in not_recorded.values()),
            guest,
            {"DUMP_PATH": str(path), "DUMP_FORMAT": fmt, "DUMP_BYTES": str(size or 0),
             "DUMP_SECONDS": f"{seconds:.3f}", **triage_fields(report), **not_recorded},
        )
    )
    done: dict[str, Any] = {"path": str(path), "format": fmt, "bytes": size,
                            "seconds": round(seconds, 3)}
    if not_recorded:
        done["not_recorded"] = not_recorded
    return done


async def _triage(path: Path) -> dict[str, Any]:
    # A triage that cannot run (no processes left, or a bug) costs the report, not the dump.
    try:
        return await triage_in_child(path)
    except Exception as exc:
        error = os_error_text(exc) if isinstance(exc, OSError) else repr(exc)
        log.warning("dump.triage_failed", path=str(path), error=error)
        return {"error": f"triage could not run: {error}"}


def triage_fields(report: dict[str, Any]) -> dict[str, str]:
    """The journal fields for what triage found (or why it found nothing)."""
    if "error" in report:
        return {"TRIAGE_ERROR": str(report["error"])}
    fields = {"KERNEL_RELEASE": str(report.get("kernel_release") or ""),
              "KERNEL_LOG": "\n".join(report.get("last_lines") or [])}
    if report.get("panic_reason"):
        fields["PANIC_REASON"] = str(report["panic_reason"])
    if report.get("first_problem"):
        fields["FIRST_PROBLEM"] = str(report["first_problem"])
    return fields


def _metadata(
    ctx: StepContext, path: Any, fmt: str, started_at: dt.datetime, waited: float
) -> dict[str, Any]:
    settings = ctx.policy.dump
    return {
        "panicd_version": __version__,
        "guest": ctx.guest.identity.as_dict(),
        "incident": {
            "kind": ctx.incident.kind.value,
            "detection": ctx.incident.detection.value,
            "action": ctx.incident.action,
            "received_at": dt.datetime.fromtimestamp(ctx.incident.received_at, dt.UTC),
        },
        "event": ctx.incident.raw_event,
        "dump": {
            "path": str(path),
            "format": fmt,
            "requested_format": settings.format,
            "paging": settings.paging,
            "started_at": started_at,
            "waited_for_slot_seconds": round(waited, 3),
            "result": "running",
        },
    }


async def _usable_format(ctx: StepContext, wanted: str, deadline: float) -> str:
    if wanted == "elf":
        return wanted
    caps = await run_command(ctx, "dump", "query-dump-guest-memory-capability",
                             give_up_after=time_left(deadline))
    formats = caps.get("formats", []) if isinstance(caps, dict) else []
    if wanted in formats:
        return wanted
    log.warning("dump.format_unavailable", wanted=wanted, available=formats, using="elf")
    return "elf"


